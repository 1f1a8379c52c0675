"""The request schema is declared once; the CLI, the service and the README must agree with it."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest

from fastfit_engine.request import schema
from fastfit_engine.errors import TryOnError
from fastfit_engine.request.schema import RequestError, TryOnParams, check_garments, parse_numbers

ROOT = Path(__file__).resolve().parents[1]


def test_defaults():
    assert parse_numbers({}) == TryOnParams(steps=30, seed=None, guidance_scale=2.5, mask_grow=0)
    assert parse_numbers({"steps": "", "seed": " ", "guidance_scale": None}).steps == 30


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
        assert getattr(out, k) == v and type(getattr(out, k)) is type(v)


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
                "--guidance", "--quality", "--save-mask", "--models-dir", "--help", "--resolution", "--progress",
                "--no-progress", "--mask", "--mask-grow"}
    assert flags == expected
    assert {f.cli_flag for f in schema.NUMBER_FIELDS} <= flags


def test_table_rows_match_fields():
    rows = [line for line in schema.markdown_table().splitlines()[2:]]
    names = [r.split("|")[1].strip().strip("`") for r in rows]
    assert names == list(schema.ALL_FIELDS)


# -- the parameter object ------------------------------------------------------------------------
def test_params_are_frozen_and_match_the_number_fields():
    params = parse_numbers({"steps": "4"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.steps = 5
    assert [f.name for f in dataclasses.fields(TryOnParams)] == [f.name for f in schema.NUMBER_FIELDS]


def test_defaults_come_from_the_schema_only():
    """The number fields hold the only defaults: not TryOnParams, not the engine, not the CLI."""
    from fastfit_engine.runtime.engine import FastFitEngine

    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(TryOnParams))
    assert parse_numbers({}) == TryOnParams(**{f.name: f.default for f in schema.NUMBER_FIELDS})
    engine_params = inspect.signature(FastFitEngine.process).parameters
    assert not {f.name for f in schema.NUMBER_FIELDS} & set(engine_params)


def test_a_missing_seed_is_drawn_once_by_the_params():
    given = parse_numbers({"seed": "7"})
    assert given.with_seed() is given
    drawn = [parse_numbers({}).with_seed() for _ in range(3)]
    assert all(0 <= p.seed <= schema.SEED_MAX and (p.steps, p.guidance_scale) == (30, 2.5) for p in drawn)
    assert len({p.seed for p in drawn}) == 3  # 3 equal 32-bit draws: about 1 in 2**64


def test_unknown_parameters_are_refused():
    with pytest.raises(RequestError, match=r"^unknown parameter 'step'; expected one of steps, seed, guidance_scale, mask_grow$") as info:
        parse_numbers({"step": 3})
    assert info.value.code == "unknown_field" and info.value.field == "step"


# -- errors name their field; the CLI names the field's flag --------------------------------------
@pytest.mark.parametrize("field", schema.NUMBER_FIELDS, ids=lambda f: f.name)
def test_number_errors_name_the_field_or_its_flag(field):
    with pytest.raises(RequestError) as info:
        parse_numbers({field.name: "x"})
    err = info.value
    assert err.field == field.name and err.status == 400 and isinstance(err, TryOnError)
    assert str(err) == err.describe() == f"{field.name} must be {'an integer' if field.kind is int else 'a number'}, got 'x'"
    assert err.describe(schema.cli_flag(field.name)) == f"{field.cli_flag}{str(err)[len(field.name):]}"


def test_cli_flag_of_every_field():
    assert [schema.cli_flag(f) for f in schema.ALL_FIELDS] == [
        "--person", "--upper", "--lower", "--dress", "--shoe", "--bag", "--mask", "--steps", "--seed",
        "--guidance", "--mask-grow", None, "--quality", None, None]  # output_format comes from --output's extension; preview, response_format: service only
    assert schema.cli_flag(None) is None and schema.cli_flag("hat") is None


def test_errors_not_about_one_field_keep_their_message():
    with pytest.raises(RequestError) as info:
        check_garments([])
    assert info.value.field is None and info.value.describe("--anything") == str(info.value)


def test_the_person_is_required():
    assert schema.check_images(["shoe", "person", "upper"]) == ["upper", "shoe"]
    with pytest.raises(RequestError, match="^the person image is required$") as info:
        schema.check_images(["upper"])
    assert info.value.code == "missing_person" and info.value.field == "person"


# -- one garment-slot table ------------------------------------------------------------------------
def test_everything_about_garments_derives_from_the_slot_table():
    from fastfit_engine.model import unet

    slots = schema.GARMENT_SLOTS
    assert schema.GARMENT_FIELDS == tuple(s.name for s in slots)
    assert schema.GARMENT_LABELS == {s.name: s.label for s in slots}
    assert schema.GARMENT_DESCRIPTIONS == {s.name: s.description for s in slots}
    # the model's class indices: label name -> index, the embedding rows of upstream FastFit
    assert unet.GARMENT_LABELS == {"upper": 0, "lower": 1, "overall": 2, "shoe": 3, "bag": 4}
    assert unet.GARMENT_LABELS == {s.label: s.class_index for s in slots}
    assert {s.name: s.size_factor for s in slots} == {"upper": 1, "lower": 1, "dress": 1, "shoe": 2, "bag": 2}


def test_one_garment_set_per_size_layout():
    sets = schema.garment_set_per_size_layout()
    factor = {s.name: s.size_factor for s in schema.GARMENT_SLOTS}
    layouts = []
    for names in sets:
        assert check_garments(names) == list(names)  # allowed, in reference order
        layouts.append(tuple(factor[n] for n in names))
    assert len(set(layouts)) == len(layouts) == 8  # each layout once
    # every layout a request can have: 0-2 person-size x 0-2 half-size references, not none
    assert {(lay.count(1), lay.count(2)) for lay in layouts} == {(b, s) for b in range(3) for s in range(3)} - {(0, 0)}
    assert set().union(*sets) == set(schema.GARMENT_FIELDS)  # every slot is touched
    from fastfit_engine.runtime.engine import FastFitEngine

    assert FastFitEngine.WARMUP_SETS == sets
