"""The convention shared by the three person parsers (parse_utils.base): from_pretrained, the device
check and the single-image/list rule, on the tiny synthetic Human-Toolkit tree read by the real loaders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import parse_utils
from helpers import make_person
from parse_utils.base import PersonParser, as_image_list, resolve_device

PARSERS = ["DWposeDetector", "DensePose", "SCHP"]


def _weights(toolkit: Path, name: str) -> Path:
    """What each parser's constructor has always taken: a folder, a folder, a checkpoint file."""
    return {"DWposeDetector": toolkit / "DWPose", "DensePose": toolkit / "DensePose",
            "SCHP": toolkit / "SCHP" / "schp-lip.pth"}[name]


@pytest.fixture(scope="module")
def toolkit(models_dir) -> Path:
    return models_dir / "Human-Toolkit"


@pytest.fixture(scope="module")
def parsers(toolkit) -> dict[str, PersonParser]:
    return {name: getattr(parse_utils, name)(_weights(toolkit, name), device="cpu") for name in PARSERS}


@pytest.fixture(scope="module")
def people() -> list[Image.Image]:
    return [make_person(60, 80, seed=1), make_person(72, 64, seed=2)]


def _same(a, b) -> bool:
    return type(a) is type(b) and a.size == b.size and a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- resolve_device
@pytest.mark.parametrize("given,expected", [
    ("cpu", torch.device("cpu")),
    (torch.device("cpu"), torch.device("cpu")),
    ("cuda", torch.device("cuda")),
    ("cuda:1", torch.device("cuda", 1)),
    (torch.device("cuda", 2), torch.device("cuda", 2)),
])
def test_resolve_device_accepts_cpu_cuda_and_cuda_n(given, expected):
    resolved = resolve_device(given, require_cuda=False)
    assert isinstance(resolved, torch.device) and resolved == expected


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0", "mps", "", None, 3.5])
def test_resolve_device_rejects_anything_else(device):
    with pytest.raises(ValueError, match=r"^unknown device .*; use 'cpu', 'cuda' or 'cuda:N'$"):
        resolve_device(device, require_cuda=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_requires_cuda_for_torch_parsers():
    with pytest.raises(ValueError, match=r"device 'cuda:0' requested but CUDA is not available"):
        resolve_device("cuda:0")
    assert resolve_device("cuda:0", require_cuda=False) == torch.device("cuda", 0)


def test_as_image_list():
    assert as_image_list("a", "P") == (["a"], False)
    assert as_image_list(["a"], "P") == (["a"], True)
    assert as_image_list(("a", "b"), "P") == (["a", "b"], True)
    with pytest.raises(ValueError, match=r"^P needs at least one image; got an empty list$"):
        as_image_list([], "P")


# ---------------------------------------------------------------- the three parsers
@pytest.mark.parametrize("name", PARSERS)
def test_every_parser_follows_the_protocol(parsers, name):
    parser = parsers[name]
    assert isinstance(parser, PersonParser) and isinstance(parser, getattr(parse_utils, name))
    assert parser.device == torch.device("cpu")


def _same_weights(a: PersonParser, b: PersonParser) -> bool:
    """Both parsers hold the same loaded weights (DWPose: the same ONNX graphs' outputs on one image)."""
    if isinstance(a, parse_utils.DWposeDetector):
        return _same(a(make_person(40, 52)), b(make_person(40, 52)))
    net_a, net_b = (p.network if isinstance(p, parse_utils.SCHP) else p.model for p in (a, b))
    sa, sb = net_a.state_dict(), net_b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", PARSERS)
def test_from_pretrained_matches_the_constructor(parsers, toolkit, name):
    cls = getattr(parse_utils, name)
    loaded = cls.from_pretrained(_weights(toolkit, name), device=torch.device("cpu"))
    assert type(loaded) is cls and loaded.device == torch.device("cpu")
    assert _same_weights(loaded, parsers[name])


@pytest.mark.parametrize("name", PARSERS)
def test_single_image_gives_one_result_and_a_list_gives_a_list(parsers, people, name):
    # Four images' worth of work per parser: DensePose runs at 800 px whatever the input size (this
    # test: 2.3 s for DensePose's four on the shared 2-core CPU box, 2026-12-01).
    parser = parsers[name]
    single = parser(people[0])
    assert isinstance(single, Image.Image) and single.size == people[0].size
    one = parser([people[1]])
    assert isinstance(one, list) and len(one) == 1
    assert isinstance(one[0], Image.Image) and one[0].size == people[1].size
    both = parser(tuple(people))
    assert isinstance(both, list) and [b.size for b in both] == [p.size for p in people]
    assert _same(both[0], single) and _same(both[1], one[0])


@pytest.mark.parametrize("name", PARSERS)
def test_empty_list_is_an_error_naming_the_parser(parsers, name):
    with pytest.raises(ValueError, match=rf"^{name} needs at least one image; got an empty list$"):
        parsers[name]([])


@pytest.mark.parametrize("name", PARSERS)
def test_bad_device_is_the_same_error_for_every_parser(toolkit, name):
    with pytest.raises(ValueError, match=r"^unknown device 'gpu0'; use 'cpu', 'cuda' or 'cuda:N'$"):
        getattr(parse_utils, name)(_weights(toolkit, name), device="gpu0")


def test_dwpose_output_type_applies_to_every_item(parsers, people):
    drawings = parsers["DWposeDetector"](people, output_type="np")
    assert [d.shape for d in drawings] == [(80, 60, 3), (64, 72, 3)]
    assert all(d.dtype == np.uint8 for d in drawings)
    assert np.array_equal(drawings[0], np.asarray(parsers["DWposeDetector"](people[0])))


# ---------------------------------------------------------------- SCHP from a folder
@pytest.mark.parametrize("dataset", ["lip", "atr"])
def test_schp_takes_a_folder_and_a_dataset(toolkit, dataset):
    from_file = parse_utils.SCHP(toolkit / "SCHP" / f"schp-{dataset}.pth", device="cpu")
    from_folder = parse_utils.SCHP.from_pretrained(toolkit / "SCHP", device="cpu", dataset=dataset)
    assert from_folder.dataset == from_file.dataset and from_folder.dataset.name == dataset
    assert _same_weights(from_folder, from_file)
    assert parse_utils.SCHP(toolkit / "SCHP", dataset=dataset).labels == from_file.labels


def test_schp_folder_without_dataset_is_an_error(toolkit):
    with pytest.raises(ValueError, match=r"SCHP got the folder .*SCHP: pass dataset= one of \['atr', 'lip', 'pascal'\]"):
        parse_utils.SCHP(toolkit / "SCHP")
    with pytest.raises(ValueError, match="unknown SCHP dataset 'coco'"):
        parse_utils.SCHP(toolkit / "SCHP", dataset="coco")
    with pytest.raises(FileNotFoundError, match=r"schp-pascal\.pth"):
        parse_utils.SCHP(toolkit / "SCHP", dataset="pascal")
