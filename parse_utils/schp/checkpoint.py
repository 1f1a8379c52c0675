"""Reading the published SCHP checkpoints (schp-lip.pth, schp-atr.pth) strictly.

Format: a pickled dict whose 'state_dict' maps 'module.'-prefixed names (DataParallel) to
tensors. The architecture sizes are read off the tensor shapes, so the same code loads the
full ResNet-101 files and the tiny synthetic ones used in tests; after that every network
tensor must be present with the right shape, or loading fails naming the offending keys.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .network import RESNET101_LAYERS, AugmentCE2P, SCHPNetworkConfig

__all__ = [
    "IGNORED_CHECKPOINT_PREFIXES",
    "build_network",
    "config_from_state_dict",
    "expected_state_shapes",
    "read_schp_checkpoint",
]

_PREFIX = "module."
# Auxiliary heads of the original training code (aux parsing logits, edge fusion); they never
# reach the parsing output, and some releases carry them. Tolerated only under these names.
IGNORED_CHECKPOINT_PREFIXES = ("decoder.conv4.", "edge.conv5.")


def _describe(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def read_schp_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a .pth with torch.load(weights_only=True); return its state dict without 'module.'."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SCHP checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"cannot read SCHP checkpoint {path}: {error}") from error
    if not isinstance(payload, Mapping) or "state_dict" not in payload:
        found = sorted(payload) if isinstance(payload, Mapping) else type(payload).__name__
        raise ValueError(f"SCHP checkpoint {path} has no 'state_dict' entry (found {found})")
    return strip_prefix(payload["state_dict"], source=str(path))


def strip_prefix(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Drop the DataParallel 'module.' prefix, which every key must carry."""
    unprefixed = [k for k in state_dict if not k.startswith(_PREFIX)]
    if unprefixed:
        raise ValueError(
            f"SCHP {source}: keys without the 'module.' prefix: {_describe(unprefixed)}"
        )
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"SCHP {source}: entries that are not tensors: {_describe(not_tensors)}")
    return {k[len(_PREFIX):]: v for k, v in state_dict.items()}


def _shape(state: Mapping[str, torch.Tensor], key: str, dim: int) -> int:
    if key not in state:
        raise ValueError(f"SCHP checkpoint is missing key 'module.{key}'")
    return int(state[key].shape[dim])


def config_from_state_dict(state: Mapping[str, torch.Tensor]) -> SCHPNetworkConfig:
    """Architecture sizes implied by the tensor shapes (block counts from the highest block index)."""
    layers = []
    for index in range(1, 5):
        pattern = re.compile(rf"layer{index}\.(\d+)\.")
        blocks = {int(m.group(1)) for k in state if (m := pattern.match(k))}
        if not blocks:
            raise ValueError(f"SCHP checkpoint has no blocks for 'module.layer{index}'")
        layers.append(max(blocks) + 1)
    config = SCHPNetworkConfig(
        num_classes=_shape(state, "fushion.3.weight", 0),
        layers=tuple(layers),  # type: ignore[arg-type]
        stem_channels=(
            _shape(state, "conv1.weight", 0),
            _shape(state, "conv2.weight", 0),
            _shape(state, "conv3.weight", 0),
        ),
        planes=tuple(_shape(state, f"layer{i}.0.conv1.weight", 0) for i in range(1, 5)),  # type: ignore[arg-type]
        context_channels=_shape(state, "context_encoding.bottleneck.0.weight", 0),
        decoder_channels=_shape(state, "decoder.conv1.0.weight", 0),
        skip_channels=_shape(state, "decoder.conv2.0.weight", 0),
        edge_channels=_shape(state, "edge.conv1.0.weight", 0),
        fusion_channels=_shape(state, "fushion.0.weight", 0),
    )
    full = SCHPNetworkConfig(num_classes=config.num_classes)
    widths_are_full = all(
        getattr(config, f) == getattr(full, f)
        for f in ("stem_channels", "planes", "context_channels", "decoder_channels",
                  "skip_channels", "edge_channels", "fusion_channels")
    )
    if widths_are_full and config.layers != RESNET101_LAYERS:
        # A full-width file must be the complete ResNet-101: a truncated one would otherwise
        # load as a shallower network without complaint.
        raise ValueError(
            f"SCHP checkpoint has full-size widths but block counts {config.layers}; "
            f"expected ResNet-101 {RESNET101_LAYERS}"
        )
    return config


def expected_state_shapes(network: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Checkpoint keys (unprefixed) and shapes a network needs; BN counters are not stored."""
    return {
        k: tuple(v.shape)
        for k, v in network.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def build_network(
    state: Mapping[str, torch.Tensor],
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> AugmentCE2P:
    """Build the network the (unprefixed) state dict describes and load it strictly, in eval mode."""
    config = config_from_state_dict(state)
    if num_classes is not None and config.num_classes != num_classes:
        raise ValueError(
            f"SCHP checkpoint has {config.num_classes} classes (module.fushion.3.weight) "
            f"but the dataset has {num_classes}"
        )
    with torch.device("meta"):
        network = AugmentCE2P(config)
    expected = expected_state_shapes(network)
    ignored = {k for k in state if k.startswith(IGNORED_CHECKPOINT_PREFIXES)}
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected) - ignored
    mismatched = [
        f"module.{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + _describe("module." + k for k in missing))
    if unexpected:
        problems.append("unexpected keys: " + _describe("module." + k for k in unexpected))
    if mismatched:
        problems.append("shape mismatches: " + _describe(mismatched))
    if problems:
        raise ValueError("SCHP checkpoint does not match the network: " + "; ".join(problems))

    tensors = {k: state[k].to(torch.float32) for k in expected}
    for key, value in network.state_dict().items():
        if key.endswith("num_batches_tracked"):
            tensors[key] = torch.zeros((), dtype=value.dtype)
    network.load_state_dict(tensors, strict=True, assign=True)
    return network.to(device).eval()
