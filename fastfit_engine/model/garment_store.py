"""What the pipeline needs of a store of garments' reference K/V: a small protocol.

The pipeline can reuse a garment's conditional keys/values across requests (exact: a hit holds
the very tensors a pass computes). It does not own that store: the runtime passes one in (its
`LRUCache`), and any object with these three members will do.
"""
from __future__ import annotations

import hashlib
from collections.abc import Hashable
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

KVSnapshot = list[tuple[torch.Tensor, torch.Tensor]]  # one reference's (K, V) per self-attention layer


@runtime_checkable
class GarmentStore(Protocol):
    @property
    def enabled(self) -> bool: ...

    def get(self, key: Hashable) -> Any | None: ...

    def put(self, key: Hashable, value: Any, nbytes: int) -> bool: ...


def image_digest(image: Image.Image) -> str:
    """SHA-256 of an image's mode, size and pixel bytes (what the models see, not the file)."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def snapshot_nbytes(snapshot: KVSnapshot) -> int:
    """Bytes held by one reference's per-layer (K, V) copies."""
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in snapshot)
