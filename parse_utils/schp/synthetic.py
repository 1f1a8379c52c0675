"""Random SCHP checkpoints in the published .pth format, for tests and benchmarks.

Only the weights are synthetic: names, 'module.' prefix, container and key order are those of
schp-lip.pth / schp-atr.pth, so the real loading code is what reads them.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch

from .checkpoint import expected_state_shapes
from .labels import DATASETS, dataset_from_filename
from .network import AugmentCE2P, SCHPNetworkConfig

__all__ = ["TINY_CONFIG", "random_schp_state_dict", "write_schp_checkpoint"]

# Same topology and key names as ResNet-101 SCHP, a few thousand times fewer FLOPs.
TINY_CONFIG = SCHPNetworkConfig(
    layers=(1, 1, 2, 1),
    stem_channels=(8, 8, 16),
    planes=(4, 8, 16, 32),
    context_channels=16,
    decoder_channels=16,
    skip_channels=8,
    edge_channels=8,
    fusion_channels=16,
)


def _random_tensor(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Values that keep activations finite and outputs input-dependent through 100+ layers."""
    if key.endswith("running_var"):
        return torch.rand(shape, generator=generator) * 0.5 + 0.75
    if key.endswith("running_mean") or key.endswith("bias"):
        return torch.randn(shape, generator=generator) * 0.05
    if len(shape) == 1:  # BatchNorm gamma
        return torch.rand(shape, generator=generator) * 0.4 + 0.4
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)


def random_schp_state_dict(dataset: str, *, tiny: bool = False, seed: int = 0) -> dict[str, object]:
    """A checkpoint payload {'state_dict': OrderedDict('module.<key>' -> tensor)} with random weights."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown SCHP dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    config = (TINY_CONFIG if tiny else SCHPNetworkConfig()).with_classes(DATASETS[dataset].num_classes)
    with torch.device("meta"):
        shapes = expected_state_shapes(AugmentCE2P(config))
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict(
        (f"module.{key}", _random_tensor(key, shape, generator)) for key, shape in shapes.items()
    )
    return {"state_dict": state}


def write_schp_checkpoint(path: str | Path, *, tiny: bool = False, seed: int = 0) -> Path:
    """Write a random SCHP checkpoint; the dataset comes from the file name (schp-lip.pth, schp-atr.pth)."""
    path = Path(path)
    payload = random_schp_state_dict(dataset_from_filename(path), tiny=tiny, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path
