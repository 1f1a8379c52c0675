"""The README's project-layout table names every top-level entry of the repository, and nothing else."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORED = {".gitignore", ".dockerignore", "README.md"}


def _layout_table() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Project layout"):]
    names = set()
    for line in section.splitlines()[4:]:
        if not line.startswith("|"):
            break
        first_cell = line.split("|")[1]
        names.update(name.rstrip("/").split("/")[0] for name in re.findall(r"`([^`]+)`", first_cell))
    return names


def test_layout_table_matches_the_top_level():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top = {path.split("/")[0] for path in tracked.splitlines()} - IGNORED
    assert top, "git ls-files found nothing"
    assert _layout_table() == top
