"""The load tool sends a shop's traffic: distinct images per request unless a share is asked to
repeat, the same sequence for the same mix seed, and it reads the service's own stage timings.
Run against the real app (werkzeug server) on the tiny synthetic models."""
from __future__ import annotations

import pytest

from _front_helpers import loadtest
from _live_server import serve
from server import create_app


def test_cold_traffic_sends_new_images_every_time():
    traffic = loadtest.Traffic(1, (60, 80), 0.0, 0.0, seed=0)
    draws = [traffic.next() for _ in range(50)]
    assert [(i, i, i) for i in range(50)] == draws
    later = loadtest.Traffic(1, (60, 80), 0.0, 0.0, seed=0, first=1000)
    assert [later.next() for _ in range(3)] == [(1000, 1000, 1000), (1001, 1001, 1001), (1002, 1002, 1002)]
    a, _ = loadtest.build_request(1, (60, 80), person=3, garments=3)
    b, _ = loadtest.build_request(1, (60, 80), person=4, garments=3)
    assert loadtest.image_bytes(9, (60, 80)) in a and loadtest.image_bytes(9, (60, 80)) not in b
    assert loadtest.image_bytes(10, (768, 1024)) in a and loadtest.image_bytes(10, (768, 1024)) in b


def test_repeat_shares_pick_earlier_requests_and_follow_the_mix_seed():
    def draws(seed: int) -> list[tuple[int, int, int]]:
        traffic = loadtest.Traffic(1, (60, 80), 0.5, 0.25, seed=seed)
        return [traffic.next() for _ in range(2000)]

    first = draws(7)
    assert first == draws(7) and first != draws(8)
    new_persons = {p for i, p, _ in first if p == i}
    new_garments = {g for i, _, g in first if g == i}
    # a repeat is a person (garment pair) that an earlier request sent as new
    assert all(p in new_persons and p < i for i, p, _ in first if p != i)
    assert all(g in new_garments and g < i for i, _, g in first if g != i)
    person_share = sum(p != i for i, p, _ in first) / len(first)
    garment_share = sum(g != i for i, _, g in first) / len(first)
    assert person_share == pytest.approx(0.5, abs=0.04)
    assert garment_share == pytest.approx(0.25, abs=0.04)


def test_server_timing_is_read_in_seconds():
    assert loadtest.parse_server_timing("pose;dur=250.5, diffusion;dur=900, total;dur=1200, bad;dur=x, odd") == {
        "pose": 0.2505, "diffusion": 0.9, "total": 1.2}
    assert loadtest.parse_server_timing(None) == {}


@pytest.mark.parametrize("text", ["-0.1", "1.5"])
def test_a_share_outside_zero_to_one_is_refused(text, capsys):
    with pytest.raises(SystemExit) as exc:
        loadtest.main(["--repeat-person", text])
    assert exc.value.code == 2
    assert "a share is between 0 and 1" in capsys.readouterr().err


def test_load_against_the_real_service_counts_repeats_as_person_cache_hits(engine):
    app = create_app(engine, {"QUEUE_SIZE": 2})
    before = engine.cache_stats()["person"]["hits"]
    with serve(app) as url:
        traffic = loadtest.Traffic(1, (96, 128), 0.5, 0.0, seed=3)
        single = loadtest.run_single(url, 1, traffic, timeout=60)
        digests: dict[str, str] = {}
        result = loadtest.run_load(url, clients=1, duration=4.0, traffic=traffic, timeout=60, digests=digests)
        # a request sent again by name gives the very image the run answered
        name = sorted(digests)[0]
        person, garments = map(int, name.split("-"))
        body, ctype = loadtest.build_request(1, (96, 128), person, garments)
        again = loadtest.post(url, body, ctype, timeout=60)
    assert len(single) == 1 and single[0] > 0
    assert again[0] == 200 and again[3] == digests[name]
    assert 1 <= len(digests) <= result["completed"] and all(len(d) == 64 for d in digests.values())
    assert result["completed"] >= 2 and result["lost"] == 0
    assert result["images_per_hour"] == pytest.approx(result["completed"] / result["duration_s"] * 3600, rel=0.05)
    assert {"diffusion", "total"} <= set(result["stage_median_s"])
    assert 0 < result["gpu_work_median_s"] <= result["stage_median_s"]["total"]
    # one client: a repeated person was answered before, so each repeat is exactly one cache hit
    # (and the request sent again by name is one more)
    repeats = round(result["repeated_person_share"] * result["completed"])
    assert engine.cache_stats()["person"]["hits"] - before == repeats + 1


def test_gpu_sampler_says_why_it_has_no_figure_without_nvml():
    with loadtest.GpuSampler(index=0, period=0.01) as gpu:
        pass
    report = gpu.report()
    if report["gpu_unmeasured_because"] is None:  # a machine with a GPU and NVML: it measured
        assert report["gpu"] and report["gpu_samples"] >= 0
    else:
        assert report["gpu_busy_fraction"] is None and report["gpu_samples"] == 0


def test_load_runs_compares_overlap_off_and_on_image_by_image():
    """deploy/load_runs.py --quick: bare gunicorn with FASTFIT_OVERLAP=0, then 1, the same requests
    to each; every request both answered got the very same image, nothing lost, no recompilation."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "deploy/load_runs.py", "--quick"], cwd=root, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert list(report["runs"]) == ["overlap_off", "overlap_on"]
    for run in report["runs"].values():
        assert run["completed"] > 0 and run["lost"] == 0 and run["recompiles_during_run"] == 0
        assert len(run["single_latencies_s"]) == 1
    same = report["overlap_on_vs_off"]
    assert same["common_requests"] > 0 and same["identical_images"] == same["common_requests"]


def test_load_runs_pairs_requests_by_name():
    from _front_helpers import ROOT
    import importlib.util

    spec = importlib.util.spec_from_file_location("fastfit_load_runs", ROOT / "deploy" / "load_runs.py")
    load_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load_runs)
    assert load_runs.compare({"0-0": "a", "1-1": "b", "2-2": "c"}, {"1-1": "b", "2-2": "x", "3-3": "d"}) == {
        "common_requests": 2, "identical_images": 1}
