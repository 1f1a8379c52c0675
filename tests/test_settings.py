"""One settings module: every environment variable declared once, one rule per kind, and the
README's Configuration table generated from it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastfit_engine import settings
from fastfit_engine.settings import SETTINGS_BY_NAME, SettingError, read

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = [ROOT / "inference.py", ROOT / "server.py", ROOT / "gunicorn.conf.py",
              *ROOT.glob("fastfit_engine/**/*.py"), *ROOT.glob("fastfit_service/**/*.py"), *ROOT.glob("parse_utils/**/*.py")]


def _readme_table() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration"):]
    start = section.index("| variable | default | meaning |")
    return section[start : section.index("\n\n", start) + 1]


def test_readme_table_is_the_generated_one():
    assert _readme_table() == settings.markdown_table()


@pytest.mark.parametrize("text,expected", [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
                                           ("0", False), ("False", False), ("no", False), ("OFF", False)])
def test_one_rule_for_every_flag(text, expected):
    for name in [s.name for s in settings.SETTINGS if s.kind == "flag"]:
        assert read(name, {name: text}) is expected


def test_a_bad_flag_or_number_names_the_variable():
    with pytest.raises(SettingError, match="FASTFIT_METRICS_PUBLIC must be 1 or 0 .* got 'maybe'"):
        read("FASTFIT_METRICS_PUBLIC", {"FASTFIT_METRICS_PUBLIC": "maybe"})
    with pytest.raises(SettingError, match="FASTFIT_QUEUE_SIZE must be a whole number >= 0, got '2.5'"):
        read("FASTFIT_QUEUE_SIZE", {"FASTFIT_QUEUE_SIZE": "2.5"})
    with pytest.raises(SettingError, match="FASTFIT_REQUEST_TIMEOUT must be a number >= 0, got '-1'"):
        read("FASTFIT_REQUEST_TIMEOUT", {"FASTFIT_REQUEST_TIMEOUT": "-1"})


def test_blank_is_unset_and_values_are_typed():
    assert read("FASTFIT_QUEUE_SIZE", {"FASTFIT_QUEUE_SIZE": "  "}) == 2
    assert read("FASTFIT_QUEUE_TIMEOUT", {"FASTFIT_QUEUE_TIMEOUT": "1.5"}) == 1.5
    assert read("FASTFIT_API_KEYS", {"FASTFIT_API_KEYS": " a, ,b "}) == ("a", "b")
    assert read("FASTFIT_WARMUP", {}) is None and read("FASTFIT_DWPOSE_DEVICE", {}) == "auto"
    for s in settings.SETTINGS:  # every default is what its own parser would give
        if s.default is not None and s.kind in ("count", "number", "int"):
            assert s.parse(str(s.default)) == s.default, s.name


def test_every_variable_the_code_names_is_declared():
    named: set[str] = set()
    for path in PRODUCTION:
        named.update(re.findall(r'"((?:FASTFIT|GUNICORN|HF_HUB)_[A-Z_]+|[A-Z_]+_REVISION)"', path.read_text()))
    assert sorted(named - set(SETTINGS_BY_NAME)) == []
    assert len(named) > 30


def test_no_module_but_settings_reads_the_environment():
    readers = re.compile(r"os\.environ\.get\(|os\.getenv\(|environ\.get\(\"(?:FASTFIT|GUNICORN)")
    offenders = [str(p.relative_to(ROOT)) for p in PRODUCTION
                 if p.name != "settings.py" and readers.search(p.read_text())]
    assert offenders == []
