"""Loading detectron2 ``.pkl`` checkpoints without executing pickled code.

The model-zoo file is a plain pickle of ``{'model': {name: ndarray}, '__author__': ...}``. A stock
``pickle.load`` would run any callable embedded in the file, so the unpickler below resolves only
the few globals numpy needs to rebuild arrays and refuses everything else before it is called.
"""
from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# The globals a numpy array pickle references, under the module names numpy 1.x and 2.x write.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # Python 3 pickles at protocol 2 store the array bytes as latin1 text re-encoded by this.
    ("_codecs", "encode"): codecs.encode,
}

# Keys that older detectron2 versions saved but that are not network weights.
IGNORED_KEYS = frozenset(
    [f"proposal_generator.anchor_generator.cell_anchors.{i}" for i in range(5)]
    + ["pixel_mean", "pixel_std"]
)
_MAX_NAMED = 12


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits numpy arrays, dtypes and plain containers only."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays and plain containers "
                "are allowed in a checkpoint pickle") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent ids in a checkpoint pickle")


def restricted_loads(data: bytes) -> Any:
    """Unpickle bytes with latin1 strings (Python 2 era pickles), numpy arrays only."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _name_keys(keys: Any) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_NAMED])
    return shown + (f", ... ({len(keys)} in total)" if len(keys) > _MAX_NAMED else "")


def extract_model_weights(obj: Any) -> dict[str, Any]:
    """Pick the parameter dict out of a detectron2 checkpoint and normalise its names."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint must hold a dict, got {type(obj).__name__}")
    if "model" in obj and isinstance(obj["model"], Mapping):
        weights = obj["model"]
    elif "blobs" in obj and isinstance(obj["blobs"], Mapping):
        weights = obj["blobs"]
    else:
        weights = obj
    out: dict[str, Any] = {}
    for key, value in weights.items():
        if not isinstance(key, str):
            raise ValueError(f"checkpoint key {key!r} is not a string")
        if key.endswith("_momentum"):
            continue
        if key.startswith("module."):
            key = key[len("module."):]
        if key in IGNORED_KEYS:
            continue
        out[key] = value
    return out


def load_detectron2_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Read a detectron2 ``.pkl`` file into ``{name: ndarray}`` through the restricted unpickler."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DensePose checkpoint not found: {path}")
    return extract_model_weights(restricted_loads(path.read_bytes()))


def _as_tensor(key: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise ValueError(f"checkpoint entry {key} has object dtype")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ValueError(f"checkpoint entry {key} is a {type(value).__name__}, expected an array")


def load_into_model(model: nn.Module, weights: Mapping[str, Any]) -> None:
    """Copy ``weights`` into ``model`` strictly; any missing, unexpected or mis-shaped key is an error.

    The only tolerance is detectron2's: a frozen-BN layer stored without both running statistics gets
    mean 0 and variance 1 (still with eps inside the square root).
    """
    expected = model.state_dict()
    given = dict(weights)
    for key in list(expected):
        if key.endswith(".norm.running_mean") and key not in given:
            var_key = key[: -len("running_mean")] + "running_var"
            if var_key not in given:
                given[key] = torch.zeros(expected[key].shape)
                given[var_key] = torch.ones(expected[var_key].shape)
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_name_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_name_keys(unexpected)}")
        raise ValueError("DensePose checkpoint does not match the network; " + "; ".join(parts))
    tensors = {k: _as_tensor(k, v) for k, v in given.items()}
    mismatched = [f"{k} {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in expected if tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if mismatched:
        raise ValueError("DensePose checkpoint shapes do not match the network (checkpoint vs "
                         f"network): {_name_keys(mismatched)}")
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key].to(target.dtype))
