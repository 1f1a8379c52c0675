"""The README's project-layout table names every top-level entry of the repository and every
layer of the engine package, and nothing else."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORED = {".gitignore", ".dockerignore", "README.md"}


def _layout_paths() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Project layout"):]
    paths = []
    for line in section.splitlines()[4:]:
        if not line.startswith("|"):
            break
        paths += re.findall(r"`([^`]+)`", line.split("|")[1])
    return paths


def _layout_table() -> set[str]:
    return {name.rstrip("/").split("/")[0] for name in _layout_paths()}


def test_layout_table_matches_the_top_level():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top = {path.split("/")[0] for path in tracked.splitlines()} - IGNORED
    assert top, "git ls-files found nothing"
    assert _layout_table() == top


def test_layout_table_follows_the_engine_layers():
    engine = ROOT / "fastfit_engine"
    entries = {p.name + "/" for p in engine.iterdir() if (p / "__init__.py").is_file()}
    entries |= {p.name for p in engine.glob("*.py") if p.name != "__init__.py"}
    listed = {path.split("/", 1)[1] for path in _layout_paths() if path.startswith("fastfit_engine/") and path != "fastfit_engine/"}
    assert listed == entries
