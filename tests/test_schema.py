"""The request schema is declared once; the CLI, the service and the README must agree with it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastfit_engine import schema
from fastfit_engine.schema import RequestError, check_garments, parse_numbers

ROOT = Path(__file__).resolve().parents[1]


def test_defaults():
    assert parse_numbers({}) == {"steps": 30, "seed": None, "guidance_scale": 2.5}
    assert parse_numbers({"steps": "", "seed": " ", "guidance_scale": None})["steps"] == 30


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"steps": "1"}, {"steps": 1}),
        ({"steps": "100"}, {"steps": 100}),
        ({"seed": "0"}, {"seed": 0}),
        ({"seed": str(2**32 - 1)}, {"seed": 2**32 - 1}),
        ({"guidance_scale": "1"}, {"guidance_scale": 1.0}),
        ({"guidance_scale": "10.0"}, {"guidance_scale": 10.0}),
        ({"steps": 7.0}, {"steps": 7}),
        ({"seed": np.int64(5)}, {"seed": 5}),
        ({"guidance_scale": np.float32(2.0)}, {"guidance_scale": 2.0}),
    ],
)
def test_bounds_are_inclusive(values, expected):
    out = parse_numbers(values)
    for k, v in expected.items():
        assert out[k] == v and type(out[k]) is type(v)


@pytest.mark.parametrize(
    "values, code, message",
    [
        ({"steps": "0"}, "out_of_range", "steps must be between 1 and 100, got 0"),
        ({"steps": "101"}, "out_of_range", "steps must be between 1 and 100, got 101"),
        ({"steps": "2.5"}, "invalid_number", "steps must be an integer, got '2.5'"),
        ({"steps": 2.5}, "invalid_number", "steps must be an integer, got 2.5"),
        ({"steps": True}, "invalid_number", "steps must be a number, got True"),
        ({"seed": "-1"}, "out_of_range", "seed must be between 0 and 4294967295, got -1"),
        ({"seed": str(2**32)}, "out_of_range", "seed must be between 0 and 4294967295, got 4294967296"),
        ({"seed": "abc"}, "invalid_number", "seed must be an integer, got 'abc'"),
        ({"guidance_scale": "0.99"}, "out_of_range", "guidance_scale must be between 1.0 and 10.0, got 0.99"),
        ({"guidance_scale": "inf"}, "invalid_number", "guidance_scale must be a finite number, got 'inf'"),
        ({"guidance_scale": "x"}, "invalid_number", "guidance_scale must be a number, got 'x'"),
    ],
)
def test_bad_numbers(values, code, message):
    with pytest.raises(RequestError) as info:
        parse_numbers(values)
    assert info.value.code == code and str(info.value) == message
    assert info.value.field == next(iter(values))


def test_garment_rules():
    assert check_garments({"bag", "upper", "shoe", "lower"}) == ["upper", "lower", "shoe", "bag"]
    assert check_garments(["dress", "shoe"]) == ["dress", "shoe"]
    for bad, code in [([], "no_garment"), (["dress", "upper"], "dress_conflict"),
                      (["lower", "dress"], "dress_conflict"), (["hat"], "unknown_field")]:
        with pytest.raises(RequestError) as info:
            check_garments(bad)
        assert info.value.code == code
    with pytest.raises(RequestError, match="dress cannot be combined with lower"):
        check_garments(["lower", "dress"])


def test_reference_order_and_labels():
    assert schema.GARMENT_FIELDS == ("upper", "lower", "dress", "shoe", "bag")
    assert [schema.GARMENT_LABELS[g] for g in schema.GARMENT_FIELDS] == ["upper", "lower", "overall", "shoe", "bag"]


def test_readme_carries_the_generated_table():
    readme = (ROOT / "README.md").read_text()
    assert schema.markdown_table() in readme


def test_cli_flags_come_from_the_schema():
    import inference

    parser = inference.build_parser()
    flags = {opt for a in parser._actions for opt in a.option_strings if opt.startswith("--")}
    expected = {"--person", "--output", "--upper", "--lower", "--dress", "--shoe", "--bag", "--steps", "--seed",
                "--guidance", "--quality", "--save-mask", "--models-dir", "--help"}
    assert flags == expected
    assert {f.cli_flag for f in schema.NUMBER_FIELDS} <= flags


def test_table_rows_match_fields():
    rows = [line for line in schema.markdown_table().splitlines()[2:]]
    names = [r.split("|")[1].strip().strip("`") for r in rows]
    assert names == list(schema.ALL_FIELDS)
