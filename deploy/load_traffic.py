"""The load tool's traffic (deploy/loadtest.py): which person and which garment pair each request
sends, and the request's bytes.

Request i of a run gets a new person photo and new garments (distinct bytes, so every cache
misses: "cold"), except that with probability `repeat_person` it reuses one of the persons
already sent (and likewise `repeat_garments` for the garment pair). The draws come from a seed,
so two runs with the same options send the same sequence. Images are smooth random fields made
from a number, so they cost the client little CPU and the same number always gives the same bytes.

The multipart body is built by fastfit_client.multipart_body (the repository root must be on
sys.path; loadtest.py puts it there), so the load tool sends what the shop's client sends.
"""
from __future__ import annotations

import io
import random
import threading

from fastfit_client import multipart_body

GARMENT_SIZE = (768, 1024)


def image_bytes(seed: int, size: tuple[int, int]) -> bytes:
    """A JPEG of a smooth random field, different for every seed (a 24x32 grid, upsampled)."""
    import numpy as np
    from PIL import Image

    grid = np.random.default_rng(seed).integers(0, 255, (32, 24, 3), dtype=np.uint8)
    img = Image.fromarray(grid, "RGB").resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_request(steps: int, person_size: tuple[int, int], person: int = 0, garments: int = 0) -> tuple[bytes, str]:
    """A multipart upper+lower request; `person` and `garments` number the images (same number, same bytes)."""
    files = {"person": image_bytes(3 * person, person_size),
             "upper": image_bytes(3 * garments + 1, GARMENT_SIZE),
             "lower": image_bytes(3 * garments + 2, GARMENT_SIZE)}
    return multipart_body(files, {"steps": steps, "seed": 1, "guidance_scale": 2.5})


class Traffic:
    """The request sequence: which person and which garment pair request i sends (thread-safe)."""

    def __init__(self, steps: int, person_size: tuple[int, int], repeat_person: float, repeat_garments: float,
                 seed: int, first: int = 0):
        self.steps, self.person_size = steps, person_size
        self.repeat_person, self.repeat_garments = repeat_person, repeat_garments
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._count = first  # the first request's index (another run's images are then new to the caches)
        self._persons: list[int] = []  # numbers sent so far, each once
        self._garments: list[int] = []

    def next(self) -> tuple[int, int, int]:
        """(request index, person number, garment number); a repeat picks one already sent."""
        with self._lock:
            i = self._count
            self._count += 1
            return i, self._pick(i, self.repeat_person, self._persons), self._pick(i, self.repeat_garments, self._garments)

    def _pick(self, i: int, share: float, sent: list[int]) -> int:
        if sent and self._rng.random() < share:
            return self._rng.choice(sent)
        sent.append(i)
        return i

    def body(self) -> tuple[bytes, str, bool, str]:
        """The next request's body, its content type, whether it repeats the person, and its name
        ("person-garments": the same name, the same bytes, whatever the run)."""
        i, person, garments = self.next()
        body, ctype = build_request(self.steps, self.person_size, person, garments)
        return body, ctype, person != i, f"{person}-{garments}"
