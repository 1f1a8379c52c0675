"""Exact caches across requests: a garment's conditional reference K/V and a person's parser maps.

Shops send the same garment for many shoppers and the same shopper with many garments. What a
garment contributes to a request (its VAE latent and the keys/values its reference pass stores in
the UNet's 16 self-attention layers) depends only on the prepared garment image, its slot label,
its size and the weights; what a person contributes (DWPose drawing, DensePose,
SCHP LIP and ATR maps, and the cloth-agnostic mask made from them) depends only on the prepared
person image. Both are kept here, keyed by a hash of the prepared image's bytes plus everything
else the values depend on, so a hit returns the very values a miss computes and a cached
request's image is bit-identical to an uncached one.

- :class:`LRUCache`: least-recently-used entries bounded by a byte budget (and optionally a
  count), with hit/miss/eviction counters that the service exports to Prometheus.
- Garment cache (GPU memory): ``FASTFIT_GARMENT_CACHE_MB``, default 1024; 0 disables.
- Person cache (CPU memory): ``FASTFIT_PERSON_CACHE_MB``, default 256, and
  ``FASTFIT_PERSON_CACHE_ITEMS``, default 64; 0 in either disables.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..model.garment_store import image_digest, snapshot_nbytes

__all__ = [
    "LRUCache",
    "PersonMaps",
    "image_digest",
    "snapshot_nbytes",
]



@dataclass(frozen=True)
class PersonMaps:
    """The person's parser outputs at the working size and the cloth-agnostic mask built from
    them (the same for every seed); the arrays are read-only (shared by hits)."""

    pose: Image.Image  # DWPose drawing (RGB)
    densepose: np.ndarray  # uint8 part labels
    lip: np.ndarray  # SCHP LIP labels
    atr: np.ndarray  # SCHP ATR labels
    mask: Image.Image  # L, 255 = repaint

    @classmethod
    def frozen(cls, pose: Image.Image, densepose: Any, lip: Any, atr: Any, mask: Image.Image) -> PersonMaps:
        arrays = []
        for value in (densepose, lip, atr):
            array = np.array(value, copy=True)
            array.setflags(write=False)
            arrays.append(array)
        return cls(pose.copy(), *arrays, mask=mask.copy())

    @property
    def nbytes(self) -> int:
        w, h = self.pose.size
        mask = self.mask.size[0] * self.mask.size[1]
        return w * h * len(self.pose.getbands()) + self.densepose.nbytes + self.lip.nbytes + self.atr.nbytes + mask


class LRUCache:
    """Least-recently-used map bounded by ``max_bytes`` (and ``max_items`` when given).

    An entry larger than the whole budget is not stored. Thread-safe: the engine fills it under
    its request lock while the metrics endpoint reads the counters from another thread.
    """

    def __init__(self, name: str, max_bytes: int, max_items: int | None = None) -> None:
        self.name = name
        self.max_bytes = max(0, int(max_bytes))
        self.max_items = None if max_items is None else max(0, int(max_items))
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_items != 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Any | None:
        """The value (now most recently used) or None; counts a hit or a miss when enabled."""
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> bool:
        """Store ``value`` (``nbytes`` large), evicting the least recently used; False if it cannot fit."""
        nbytes = int(nbytes)
        if not self.enabled or nbytes > self.max_bytes:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[key] = (value, nbytes)
            self.bytes += nbytes
            while self.bytes > self.max_bytes or (self.max_items is not None and len(self._entries) > self.max_items):
                _, (_, size) = self._entries.popitem(last=False)
                self.bytes -= size
                self.evictions += 1
        return True

    def clear(self) -> None:
        """Drop every entry (the counters stay: they are totals since start)."""
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "entries": len(self._entries),
                "bytes": self.bytes,
                "max_bytes": self.max_bytes,
            }
