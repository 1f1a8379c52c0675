"""`fastfit_client.py batch` against the real service (gunicorn, tiny synthetic models, 128x192, 1 step):
a 50-row catalogue with 5 bad rows, a burst of 503s, the client killed, the service killed and
restarted in the middle, and a second run that does nothing."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from _front_helpers import get, loadtest
from helpers import make_garment, make_person, stop_process

ROOT = Path(__file__).resolve().parents[1]
CLIENT = [sys.executable, str(ROOT / "fastfit_client.py"), "batch"]


def _catalogue(folder: Path) -> tuple[Path, dict[str, str]]:
    """50 rows: three persons x garments (45 good rows, some with a seed), and 5 bad rows; returns
    the manifest and each bad row's expected code."""
    for i in range(3):
        make_person(seed=i).save(folder / f"model{i}.png")
    colours = [(200, 30, 40), (30, 40, 160), (30, 150, 60), (90, 50, 30), (170, 110, 60), (20, 20, 20)]
    for j, c in enumerate(colours):
        make_garment(c).save(folder / f"item{j}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = []
    for k in range(45):  # persons interleaved: the runner groups them
        row = {"name": f"look{k:02d}", "person": f"model{k % 3}.png", "steps": "1"}
        j = k // 3 % len(colours)
        row["dress" if k % 5 == 0 else "upper"] = f"item{j}.png"
        if k % 4 == 0:
            row["lower"] = f"item{(j + 1) % len(colours)}.png" if "upper" in row else ""
        if k % 2 == 0:
            row["seed"] = str(1000 + k)
        rows.append(row)
    bad = {
        "bad_missing": ({"person": "model0.png", "upper": "nowhere.png"}, "file_not_found"),
        "bad_dress": ({"person": "model1.png", "upper": "item0.png", "dress": "item2.png"}, "dress_conflict"),
        "bad_image": ({"person": "model2.png", "upper": "broken.png"}, "invalid_image"),
        "bad_steps": ({"person": "model0.png", "upper": "item1.png", "steps": "0"}, "out_of_range"),
        "bad_person": ({"upper": "item1.png"}, "missing_person"),
    }
    for i, (name, (row, _)) in enumerate(bad.items()):
        rows.insert(7 * i + 3, {"name": name, **row})
    columns = ["name", "person", "upper", "lower", "dress", "seed", "steps"]
    manifest = folder / "catalogue.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return manifest, {name: code for name, (_, code) in bad.items()}


class Gunicorn:
    def __init__(self, port: int, models_dir: Path, log: Path):
        env = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_ACCESSLOG": "-",
               "FASTFIT_MODELS_DIR": str(models_dir), "FASTFIT_RESOLUTION": "128x192", "FASTFIT_DEVICE": "cpu",
               "HF_HUB_OFFLINE": "1", "FASTFIT_WARMUP": "0", "FASTFIT_QUEUE_SIZE": "1", "FASTFIT_RETRY_AFTER": "1"}
        self.log = open(log, "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "server:app"],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # master and worker at once, mid-request
        self.proc.wait(30)
        self.log.close()


class Watcher(threading.Thread):
    """Checks the output folder every few milliseconds: every visible image is whole (decodes to
    the working size) and has its sidecar; the only other files are hidden .part files."""

    def __init__(self, out: Path):
        super().__init__(daemon=True)
        self.out = out
        self.problems: list[str] = []
        self.looks = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for p in list(self.out.glob("*")):
                try:
                    if p.suffix == ".png":
                        data = p.read_bytes()
                        with Image.open(io.BytesIO(data)) as img:
                            img.load()
                            if img.size != (128, 192):
                                self.problems.append(f"{p.name}: {img.size}")
                        if not p.with_suffix(".json").exists():
                            self.problems.append(f"{p.name} without its sidecar")
                    elif p.suffix == ".json" and p.name != "failures.jsonl":
                        json.loads(p.read_text())
                    elif p.name.endswith(".part") and not p.name.startswith("."):
                        self.problems.append(f"visible partial file {p.name}")
                except FileNotFoundError:
                    pass
                except Exception as exc:  # a half-written image or sidecar
                    self.problems.append(f"{p.name}: {exc!r}")
            self.looks += 1
            time.sleep(0.02)


def _images(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.png"))


def _wait_for_images(out: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while len(_images(out)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"only {len(_images(out))} images"
        time.sleep(0.05)


def test_a_catalogue_survives_503s_a_killed_client_and_a_restarted_service(models_dir, tmp_path):
    manifest, bad = _catalogue(tmp_path)
    out = tmp_path / "renders"
    out.mkdir()
    port = loadtest.free_port_block(1)
    url = f"http://127.0.0.1:{port}"
    args = CLIENT + [str(manifest), "--out", str(out), "--url", url, "--concurrency", "3", "--tries", "60"]
    first = Gunicorn(port, models_dir, tmp_path / "gunicorn1.log")
    second = None
    watcher = Watcher(out)
    watcher.start()
    try:
        # run 1 starts while the models load (503 loading) and is killed after a few images
        run1 = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_images(out, 6, run1)
        run1.kill()
        run1.communicate()

        # run 2 goes on from there; the service is killed mid-run and a new one started on the port
        run2 = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_images(out, 20, run2)
        first.kill()
        second = Gunicorn(port, models_dir, tmp_path / "gunicorn2.log")
        stdout, stderr = run2.communicate(timeout=600)
        assert run2.returncode == 1, stderr  # some rows failed
        counts = re.match(r"done (\d+), skipped (\d+), failed (\d+), ", stdout)
        done, skipped, failed = (int(x) for x in counts.groups())
        assert skipped >= 6 and done + skipped == 45 and failed == 5, stdout
    finally:
        watcher.stop.set()
        watcher.join(10)
        if second is None:
            first.kill()
    try:
        assert watcher.problems == [] and watcher.looks > 100
        names = _images(out)
        assert names == [f"look{k:02d}.png" for k in range(45)]  # every good row, once
        assert not [p.name for p in out.iterdir() if p.name.endswith(".part")]
        failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
        assert {f["name"]: f["code"] for f in failures} == bad
        assert all(f["message"] and f["line"] > 0 for f in failures)
        for k in (0, 1, 2):  # the seed used is recorded: given, or the service's
            side = json.loads((out / f"look{k:02d}.json").read_text())
            assert side["line"] >= 1 and side["synthetic_weights"] is False  # the test tree has no marker
            assert side["seed"] == 1000 + k if k % 2 == 0 else 0 <= side["seed"] < 2**32
        access = (tmp_path / "gunicorn1.log").read_text() + (tmp_path / "gunicorn2.log").read_text()
        assert '"POST /prompt HTTP/1.1" 503' in access  # the burst: queue_full / loading, followed

        # a row reproduces from its sidecar's seed
        side = json.loads((out / "look01.json").read_text())
        from fastfit_client import FastFitClient

        again = FastFitClient(url, timeout=120, max_retries=60).try_on(
            tmp_path / "model1.png", upper=tmp_path / "item0.png", steps=1, seed=side["seed"])
        assert again.image == (out / "look01.png").read_bytes()

        # a second run changes nothing
        mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("look*")}
        run3 = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run3.returncode == 1 and run3.stdout.startswith("done 0, skipped 45, failed 5"), run3.stdout
        assert {p.name: p.stat().st_mtime_ns for p in out.glob("look*")} == mtimes
    finally:
        if second is not None:
            second.kill()


@pytest.mark.parametrize(
    "text, suffix, fragment",
    [
        ("person,upper,colour\nmodel0.png,item0.png,red\n", ".csv", "unknown column 'colour'"),
        ("name,person,upper\na,model0.png,item0.png\na,model0.png,item1.png\n", ".csv", "both write a.png"),
        ('{"person": "model0.png"}\n[1, 2]\n', ".jsonl", "line 2: not a JSON object"),
        ("person\n", ".txt", "a manifest is .csv or .jsonl"),
    ],
)
def test_a_bad_manifest_exits_2_before_any_request(tmp_path, text, suffix, fragment):
    make_person().save(tmp_path / "model0.png")
    make_garment().save(tmp_path / "item0.png")
    make_garment().save(tmp_path / "item1.png")
    manifest = tmp_path / f"rows{suffix}"
    manifest.write_text(text)
    run = subprocess.run(CLIENT + [str(manifest), "--out", str(tmp_path / "o"), "--url", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and fragment in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert not (tmp_path / "o").exists()


def test_jsonl_manifest_and_an_unreachable_service(tmp_path):
    """A JSON Lines manifest whose rows cannot reach any service: each row fails with
    connection_error after its bounded tries, the run ends with exit 1 (not a hang)."""
    make_person().save(tmp_path / "p.png")
    make_garment().save(tmp_path / "g.png")
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text('{"person": "p.png", "upper": "g.png", "seed": 3}\n\n{"name": "two", "person": "p.png", "bag": "g.png"}\n')
    run = subprocess.run(CLIENT + [str(manifest), "--out", str(tmp_path / "o"), "--url", "http://127.0.0.1:9",
                                   "--tries", "2"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stdout.startswith("done 0, skipped 0, failed 2"), run.stdout + run.stderr
    failures = [json.loads(line) for line in (tmp_path / "o" / "failures.jsonl").read_text().splitlines()]
    assert [(f["line"], f["name"], f["code"]) for f in failures] == [(1, "row00001", "connection_error"),
                                                                      (3, "two", "connection_error")]
