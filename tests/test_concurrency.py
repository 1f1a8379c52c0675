"""The concurrency model (fastfit_engine/runtime/concurrency.py): one GPU lock, and a request that
stops early leaves no work behind that would delay the next one."""
from __future__ import annotations

import threading
import time

import pytest

from fastfit_engine.errors import DeadlineExceeded
from helpers import make_person

DWPOSE_SECONDS = 1.5


def test_an_aborted_request_leaves_no_dwpose_work_for_the_next(engine, sample_files, monkeypatch):
    """Abort a request while its DWPose runs: the next request's pose stage starts at once (it
    is not queued behind the aborted one's DWPose on the single pose thread)."""
    real = engine.parsers.pose
    running = threading.Event()
    starts: list[float] = []

    def slow_pose(image):
        starts.append(time.perf_counter())
        running.set()
        time.sleep(DWPOSE_SECONDS)
        return real(image)

    monkeypatch.setattr(engine.parsers, "pose", slow_pose)

    def stop_once_dwpose_runs() -> None:
        if running.wait(timeout=0 if not starts else DWPOSE_SECONDS):
            raise DeadlineExceeded("stopped while DWPose runs")

    with pytest.raises(DeadlineExceeded):
        engine.process(sample_files["person"], {"upper": sample_files["upper"]}, steps=1, seed=1,
                       check=stop_once_dwpose_runs)
    assert len(starts) == 1 and not engine.gpu_lock.locked()
    t0 = time.perf_counter()
    result = engine.process(make_person(seed=5), {"upper": sample_files["upper"]}, steps=1, seed=2)
    assert len(starts) == 2
    assert starts[1] - t0 < 0.5 * DWPOSE_SECONDS, f"the next pose stage started {starts[1] - t0:.2f} s late"
    assert result.timings["pose"] >= DWPOSE_SECONDS
