"""What a running try-on is doing, for the page: `GET /progress/<request id>`.

`POST /prompt` answers only when the image is ready. A page that wants to say what is happening
meanwhile sends its own random `X-Request-ID` and polls this route with it: the answer names
the last stage the engine reported (the Server-Timing stage names: pose, garments, densepose,
schp, pose_wait, mask, then diffusion steps) or that the request still waits for the GPU.

Deliberately small: in this process's memory only, an entry lives exactly as long as its
request, and it holds no input, image or client data beyond the id the client chose. Behind the
front with several instances a poll can reach another instance and answer 404; the page then
shows the elapsed time alone.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Tracker:
    """One request's progress: the engine's `stage(name)` and `progress(step, total)` callbacks."""

    def __init__(self, board: ProgressBoard, request_id: str) -> None:
        self._board = board
        self._id = request_id

    def stage(self, name: str) -> None:
        self._board._update(self._id, state="running", stage=name)

    def step(self, step: int, total: int) -> None:
        """`step` is the engine's 0-based index of the step just finished; the board counts steps done."""
        self._board._update(self._id, state="running", stage="diffusion", step=step + 1, steps=total)


class ProgressBoard:
    """The progress of the requests this process is serving, by request id (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}

    @contextmanager
    def track(self, request_id: str) -> Iterator[Tracker]:
        """An entry for the duration of the block ("waiting" until the engine reports a stage)."""
        with self._lock:
            self._entries[request_id] = {"state": "waiting", "stage": None, "step": 0, "steps": 0,
                                         "started": time.monotonic()}
        try:
            yield Tracker(self, request_id)
        finally:
            with self._lock:
                self._entries.pop(request_id, None)

    def _update(self, request_id: str, **values: Any) -> None:
        with self._lock:
            entry = self._entries.get(request_id)
            if entry is not None:
                entry.update(values)

    def get(self, request_id: str) -> dict[str, Any] | None:
        """{"state", "stage", "step", "steps", "elapsed_s"} or None for an id not being served."""
        with self._lock:
            entry = self._entries.get(request_id)
            if entry is None:
                return None
            out = {k: v for k, v in entry.items() if k != "started"}
            out["elapsed_s"] = round(time.monotonic() - entry["started"], 3)
            return out
