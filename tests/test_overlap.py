"""The service's overlap (FASTFIT_OVERLAP): the next try-on's person side runs while another
request holds the GPU, through the real core, engine and tiny models. Images equal the serial
ones bit for bit; a request stopped during its preparation leaves nothing running; at most one
prepared request waits."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from fastfit_engine.errors import ClientGone, DeadlineExceeded
from fastfit_service.admission import RequestControl, Service
from fastfit_service.config import default_config
from fastfit_service.core import handle
from fastfit_service.prompt import check_prompt
from helpers import make_person, png_bytes

GPU_TURN_EXTRA_S = 0.3  # added after the real generate, inside the GPU turn, so the next preparation overlaps it
SLOW_POSE_S = 1.5


def _service(engine, overlap: bool, queue: int = 4) -> Service:
    svc = Service(config={**default_config({}), "OVERLAP": overlap, "QUEUE_SIZE": queue})
    svc.set_engine(engine)
    return svc


def _request(sample_files, person_seed: int, seed: int):
    uploads = {"person": png_bytes(make_person(seed=person_seed)),
               "upper": sample_files["upper"].read_bytes(), "lower": sample_files["lower"].read_bytes()}
    return check_prompt(uploads, {"steps": "2", "seed": str(seed), "guidance_scale": "2"})


def _control(svc: Service, timeout: float | None = None, gone=lambda: False) -> RequestControl:
    return RequestControl(svc, timeout, gone)


@pytest.fixture()
def recorded(engine, monkeypatch):
    """Intervals of every GPU turn's generate and start times of every DWPose call (the real
    calls run; the generate is followed by a short sleep so that turns are long enough to overlap)."""
    log: dict[str, list] = {"generate": [], "pose": []}
    real_generate, real_pose = engine.pipeline.generate, engine.parsers.pose

    def generate(*args, **kwargs):
        t0 = time.perf_counter()
        image = real_generate(*args, **kwargs)
        time.sleep(GPU_TURN_EXTRA_S)
        log["generate"].append((t0, time.perf_counter()))
        return image

    def pose(image):
        log["pose"].append(time.perf_counter())
        return real_pose(image)

    monkeypatch.setattr(engine.pipeline, "generate", generate)
    monkeypatch.setattr(engine.parsers, "pose", pose)
    engine.clear_caches()
    yield log
    engine.clear_caches()


def _burst(svc: Service, requests: list, controls: list | None = None) -> list:
    """Send the requests from one thread each, 50 ms apart; their outcomes or exceptions."""
    out: list = [None] * len(requests)

    def send(i: int) -> None:
        try:
            out[i] = handle(svc, requests[i], controls[i] if controls else _control(svc), f"r{i}")
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(120)
    return out


def test_overlapped_images_equal_serial_ones_bit_for_bit(engine, sample_files, recorded, single_thread):
    requests = [_request(sample_files, person_seed=10 + i, seed=i) for i in range(3)]
    off = _service(engine, overlap=False)
    serial = [handle(off, r, _control(off), "s") for r in requests]
    serial_turns = sorted(recorded["generate"])
    assert sorted(recorded["pose"])[1] > serial_turns[0][1]  # serially: after the first image
    engine.clear_caches()  # the overlapped run parses every person again
    recorded["generate"].clear()
    recorded["pose"].clear()
    svc = _service(engine, overlap=True)
    overlapped = _burst(svc, requests)
    assert all(not isinstance(o, Exception) for o in overlapped), overlapped
    for s, o in zip(serial, overlapped):
        assert np.array_equal(np.asarray(s.image), np.asarray(o.image))
        assert s.seed == o.seed
    # the overlap happened: each next person's DWPose started before the image ahead of it was
    # finished (serially it starts only after)
    turns, poses = sorted(recorded["generate"]), sorted(recorded["pose"])
    assert len(turns) == len(poses) == len(serial_turns) == 3
    assert poses[1] < turns[0][1] and poses[2] < turns[1][1]
    # and its GPU turn found the person ready: the stages kept their names and "pose_wait" is short
    assert all(set(o.timings) >= {"pose", "densepose", "schp", "pose_wait", "diffusion", "total"} for o in overlapped)
    assert not svc.gpu_lock.locked() and not svc.prepare_slot.locked() and svc.waiting == 0


@pytest.mark.parametrize("stop", ["client_gone", "deadline"])
def test_a_request_stopped_during_its_preparation_leaves_nothing_running(engine, sample_files, recorded, monkeypatch,
                                                                         stop, single_thread):
    """Stop a request while its DWPose runs in its preparation (no GPU lock held): the call
    raises once that DWPose has ended, nothing of it runs on, and the next request's pose starts
    at once."""
    svc = _service(engine, overlap=True)
    real_pose = engine.parsers.pose
    running = threading.Event()

    def slow_pose(image):
        running.set()
        time.sleep(SLOW_POSE_S)
        return real_pose(image)

    monkeypatch.setattr(engine.parsers, "pose", slow_pose)
    if stop == "client_gone":
        control = _control(svc, gone=running.is_set)
        expected = ClientGone
    else:
        control = _control(svc, timeout=0.3)
        expected = DeadlineExceeded
    with pytest.raises(expected):
        handle(svc, _request(sample_files, person_seed=20, seed=1), control, "stopped")
    assert len(recorded["pose"]) == 1 and recorded["generate"] == []  # stopped before its GPU turn
    assert not svc.gpu_lock.locked() and not svc.prepare_slot.locked() and svc.waiting == 0
    counter = svc.metrics.cancelled if stop == "client_gone" else svc.metrics.expired
    assert counter._value.get() == 1
    monkeypatch.setattr(engine.parsers, "pose", real_pose)
    t0 = time.perf_counter()
    outcome = handle(svc, _request(sample_files, person_seed=21, seed=2), _control(svc), "next")
    assert len(recorded["pose"]) == 2
    assert recorded["pose"][1] - t0 < 0.5 * SLOW_POSE_S, f"the next pose started {recorded['pose'][1] - t0:.2f} s late"
    assert outcome.timings["pose"] < SLOW_POSE_S


def test_at_most_one_prepared_request_waits_under_a_burst(engine, sample_files, recorded, monkeypatch, single_thread):
    """Six requests at once (one running, five admitted to wait): at any time at most one is
    preparing or prepared without the GPU, and every one gets its image."""
    svc = _service(engine, overlap=True, queue=5)
    lock = threading.Lock()
    ahead = {"now": 0, "most": 0}
    real_prepare, real_run = engine.prepare, engine.run

    def prepare(request, check=None):
        with lock:
            ahead["now"] += 1
            ahead["most"] = max(ahead["most"], ahead["now"])
        try:
            return real_prepare(request, check)
        except BaseException:
            with lock:
                ahead["now"] -= 1
            raise

    def run(request, **kwargs):
        if kwargs.get("prepared") is not None:
            with lock:
                ahead["now"] -= 1
        return real_run(request, **kwargs)

    monkeypatch.setattr(engine, "prepare", prepare)
    monkeypatch.setattr(engine, "run", run)
    outcomes = _burst(svc, [_request(sample_files, person_seed=30 + i, seed=i) for i in range(6)])
    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    assert ahead == {"now": 0, "most": 1}
    assert len(recorded["generate"]) == 6
    assert not svc.gpu_lock.locked() and not svc.prepare_slot.locked() and svc.waiting == 0


def test_overlap_off_prepares_nothing_before_the_gpu_turn(engine, sample_files, monkeypatch):
    svc = _service(engine, overlap=False)
    monkeypatch.setattr(engine, "prepare", lambda *a, **k: pytest.fail("prepared with the overlap off"))
    assert handle(svc, _request(sample_files, person_seed=40, seed=3), _control(svc), "off").seed == 3


def test_dwpose_tf32_switch_does_not_recompile_a_compiled_step():
    """DWPose's windows flip cuDNN's TF32 switch process-wide while, with the overlap, another
    thread runs the compiled denoising step: dynamo does not guard on that switch, so the step
    is neither recompiled nor rejected (its bfloat16 convolutions do not read it)."""
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    conv = torch.nn.Conv2d(3, 4, 3)
    step = torch.compile(lambda x: conv(x) * 2, backend=backend)
    x = torch.randn(1, 3, 8, 8)
    before = torch.backends.cudnn.allow_tf32
    try:
        first = step(x)
        torch.backends.cudnn.allow_tf32 = not before
        second = step(x)
    finally:
        torch.backends.cudnn.allow_tf32 = before
    assert len(compiles) == 1 and torch.equal(first, second)
