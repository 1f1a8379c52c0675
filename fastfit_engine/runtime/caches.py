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
  ``FASTFIT_PERSON_CACHE_ITEMS``, default 64; 0 in either disables. Its entries are derived from
  a customer's photo, so they also expire: ``FASTFIT_PERSON_CACHE_TTL`` seconds after they were
  stored (default 600; a hit does not extend it), whether or not requests come.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .. import settings
from ..model.garment_store import image_digest, snapshot_nbytes

__all__ = [
    "LRUCache",
    "PersonMaps",
    "expire_in_background",
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

    An entry larger than the whole budget is not stored. With ``ttl`` (seconds) an entry is
    dropped that long after it was stored, used or not (`expire`, which every access runs too;
    a TTL of 0 turns the cache off). Thread-safe: the engine fills it under its request lock
    while the metrics endpoint reads the counters from another thread.
    """

    def __init__(
        self,
        name: str,
        max_bytes: int,
        max_items: int | None = None,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.max_bytes = max(0, int(max_bytes))
        self.max_items = None if max_items is None else max(0, int(max_items))
        self.ttl = None if ttl is None else max(0.0, float(ttl))
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[Any, int, float]] = OrderedDict()  # value, bytes, stored at
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expired = 0
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_items != 0 and self.ttl != 0

    def expire(self) -> int:
        """Drop the entries older than the TTL; returns how many went."""
        if self.ttl is None:
            return 0
        with self._lock:
            return self._expire_locked()

    def _expire_locked(self) -> int:
        if self.ttl is None:
            return 0
        oldest = self._clock() - self.ttl
        stale = [key for key, (_, _, stored) in self._entries.items() if stored <= oldest]
        for key in stale:
            _, size, _ = self._entries.pop(key)
            self.bytes -= size
        self.expired += len(stale)
        return len(stale)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Any | None:
        """The value (now most recently used) or None; counts a hit or a miss when enabled."""
        if not self.enabled:
            return None
        with self._lock:
            self._expire_locked()
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
            self._expire_locked()
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[key] = (value, nbytes, self._clock())
            self.bytes += nbytes
            while self.bytes > self.max_bytes or (self.max_items is not None and len(self._entries) > self.max_items):
                _, (_, size, _) = self._entries.popitem(last=False)
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
            self._expire_locked()
            return {
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "expired": self.expired,
                "entries": len(self._entries),
                "bytes": self.bytes,
                "max_bytes": self.max_bytes,
            }


def expire_in_background(cache: LRUCache, every: float) -> threading.Thread | None:
    """A daemon thread that runs ``cache.expire()`` every ``every`` seconds, so entries go at
    their TTL even when no request comes; it ends when the cache is garbage. None without a TTL."""
    if cache.ttl is None or not cache.enabled:
        return None
    ref = weakref.ref(cache)
    del cache

    def loop() -> None:
        while (alive := ref()) is not None:
            alive.expire()
            del alive
            time.sleep(every)

    thread = threading.Thread(target=loop, name="fastfit-cache-expiry", daemon=True)
    thread.start()
    return thread


def caches_from_settings(
    garment_mb: float | None, person_mb: float | None, person_items: int | None, person_ttl: float | None
) -> tuple[LRUCache, LRUCache]:
    """An engine's garment and person caches, sized by the arguments, else FASTFIT_GARMENT_CACHE_MB,
    FASTFIT_PERSON_CACHE_MB and FASTFIT_PERSON_CACHE_ITEMS (0 disables); persons kept at most
    FASTFIT_PERSON_CACHE_TTL seconds, swept by a background thread."""
    if garment_mb is None:
        garment_mb = settings.read("FASTFIT_GARMENT_CACHE_MB")
    if person_mb is None:
        person_mb = settings.read("FASTFIT_PERSON_CACHE_MB")
    if person_items is None:
        person_items = int(settings.read("FASTFIT_PERSON_CACHE_ITEMS"))
    if person_ttl is None:
        person_ttl = settings.read("FASTFIT_PERSON_CACHE_TTL")
    person = LRUCache("person", int(person_mb * 2**20), max_items=person_items, ttl=person_ttl)
    expire_in_background(person, every=min(person_ttl, 30.0))
    return LRUCache("garment", int(garment_mb * 2**20)), person
