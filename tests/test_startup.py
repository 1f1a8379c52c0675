"""Startup: a Hub that never answers cannot hang the CLI or the service loader; load retry with backoff."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fastfit_engine.weights import assets
from fastfit_engine.weights.assets import ModelsNotFoundError, ensure_models
from fastfit_engine.weights.integrity import WeightIntegrityError
from fastfit_engine.weights.startup import RetryPolicy, call_with_retry, is_retryable

ROOT = Path(__file__).resolve().parents[1]
HANG_LIMIT = 90  # seconds; with 1 s timeouts the error comes within a few seconds (huggingface_hub retries a few times)


@pytest.fixture
def silent_hub():
    """http://127.0.0.1:PORT that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()
    assert held, "the client never connected: the test proved nothing"


def _env(endpoint: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "FASTFIT_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_ETAG_TIMEOUT="1", HF_HUB_DOWNLOAD_TIMEOUT="1",
               HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT),
               FASTFIT_LOAD_ATTEMPTS="2", FASTFIT_LOAD_BACKOFF="0.1")
    return env


def _run(args: list[str], endpoint: str, tmp_path: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, cwd=ROOT, env=_env(endpoint, tmp_path), capture_output=True, text=True,
                              timeout=HANG_LIMIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still waiting for the silent Hub after {HANG_LIMIT} s: {' '.join(args[:3])}")


def test_cli_fails_clearly_when_the_hub_never_answers(silent_hub, tmp_path, sample_files):
    proc = _run([sys.executable, "inference.py", "--person", str(sample_files["person"]), "--upper",
                 str(sample_files["upper"]), "--models-dir", str(tmp_path / "Models"),
                 "--output", str(tmp_path / "out.png")], silent_hub, tmp_path)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ModelsNotFoundError: could not download zhengchong/FastFit-MR-1024 (")
    assert "no answer within 1 s" in last
    assert not (tmp_path / "out.png").exists()


def test_service_loader_reports_engine_failed_when_the_hub_never_answers(silent_hub, tmp_path):
    code = f"""
import json, time
from server import create_app
app = create_app(config={{"MODELS_DIR": {str(tmp_path / 'Models')!r}}})
client = app.test_client()
for _ in range({HANG_LIMIT * 10}):
    r = client.get("/ready")
    if r.get_json()["error"]["code"] != "loading":
        break
    time.sleep(0.1)
svc = app.extensions["fastfit"]
print(json.dumps({{"status": r.status_code, "body": r.get_json(), "error": str(svc.load_error),
                  "error_code": getattr(svc.load_error, "code", None)}}))
"""
    code = "import logging; logging.basicConfig(level=logging.INFO)\n" + code
    proc = _run([sys.executable, "-c", code], silent_hub, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == 503 and out["body"]["error"]["code"] == "engine_failed"
    assert out["error"].startswith("could not download zhengchong/FastFit-MR-1024 (ReadTimeout: no answer within 1 s")
    assert out["error_code"] == "engine_failed"
    # a download failure is worth another attempt (FASTFIT_LOAD_ATTEMPTS=2 here)
    assert "engine load failed (attempt 1 of 2): ModelsNotFoundError: could not download" in proc.stderr
    assert "engine load failed (attempt 2 of 2, attempts exhausted)" in proc.stderr


def test_every_hub_call_gets_a_timeout_even_inside_snapshot_download(silent_hub, tmp_path):
    """snapshot_download's own repo_info call passes no timeout; the hook installed on
    huggingface_hub's shared client gives it one."""
    code = f"""
import time
from fastfit_engine.weights.assets import install_hub_timeouts
from huggingface_hub import snapshot_download
install_hub_timeouts()
t0 = time.perf_counter()
try:
    snapshot_download(repo_id="zhengchong/FastFit-MR-1024", local_dir={str(tmp_path / 'dl')!r})
except Exception as exc:
    print(type(exc).__name__, round(time.perf_counter() - t0))
"""
    proc = _run([sys.executable, "-c", code], silent_hub, tmp_path)
    assert proc.returncode == 0, proc.stderr
    name, seconds = proc.stdout.split()
    # huggingface_hub turns the timeout into "not in the local cache either"
    assert name in ("LocalEntryNotFoundError", "ReadTimeout") and int(seconds) < HANG_LIMIT


# -------------------------------------------------------------------------------------- retry policy
class Flaky:
    def __init__(self, failures: list[BaseException], value: str = "engine"):
        self.failures, self.value, self.calls = list(failures), value, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.value


def test_retry_backs_off_then_succeeds(caplog):
    slept: list[float] = []
    fn = Flaky([OSError("hub timeout"), OSError("hub timeout")])
    policy = RetryPolicy(attempts=4, first_delay=2.0, factor=3.0, max_delay=10.0)
    assert policy.delays() == [2.0, 6.0, 10.0]
    assert call_with_retry(fn, policy, sleep=slept.append) == "engine"
    assert fn.calls == 3 and slept == [2.0, 6.0]
    assert "model load failed (attempt 1 of 4): OSError: hub timeout; retrying in 2.0 s" in caplog.messages


def test_retry_gives_up_after_the_last_attempt_with_the_last_error():
    slept: list[float] = []
    fn = Flaky([OSError("one"), OSError("two"), OSError("three"), OSError("four")])
    with pytest.raises(OSError, match="three"):
        call_with_retry(fn, RetryPolicy(attempts=3, first_delay=1.0), sleep=slept.append)
    assert fn.calls == 3 and slept == [1.0, 2.0]


def test_lasting_errors_are_not_retried(tmp_path):
    slept: list[float] = []
    corrupt = Flaky([WeightIntegrityError("unet is corrupt")])
    with pytest.raises(WeightIntegrityError):
        call_with_retry(corrupt, RetryPolicy(attempts=5), sleep=slept.append)
    missing = Flaky([])
    missing_error = None
    try:
        ensure_models(tmp_path, download=False)
    except ModelsNotFoundError as exc:
        missing_error = exc
    missing.failures = [missing_error]
    with pytest.raises(ModelsNotFoundError, match="is missing"):
        call_with_retry(missing, RetryPolicy(attempts=5), sleep=slept.append)
    assert corrupt.calls == 1 and missing.calls == 1 and slept == []


def test_download_failures_are_retried_and_a_later_attempt_can_succeed(tmp_path, models_dir, monkeypatch):
    import shutil

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    outcomes = [OSError("Read timed out"), None]

    def hub(*, repo_id, local_dir, **kw):
        outcome = outcomes.pop(0) if outcomes else None
        if outcome is not None:
            raise outcome
        shutil.copytree(models_dir / Path(local_dir).relative_to(tmp_path), local_dir, dirs_exist_ok=True)

    slept: list[float] = []
    paths = call_with_retry(lambda: ensure_models(tmp_path, downloader=hub), RetryPolicy(attempts=3, first_delay=0.5),
                            sleep=slept.append)
    assert slept == [0.5] and paths.fastfit == tmp_path / "FastFit-MR-1024"
    assert assets.missing_files(assets.FASTFIT, paths.fastfit) == []


def test_policy_from_env():
    assert RetryPolicy.from_env({}) == RetryPolicy(attempts=3, first_delay=5.0, max_delay=60.0)
    env = {"FASTFIT_LOAD_ATTEMPTS": "5", "FASTFIT_LOAD_BACKOFF": "0.5", "FASTFIT_LOAD_BACKOFF_MAX": "1"}
    assert RetryPolicy.from_env(env).delays() == [0.5, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="FASTFIT_LOAD_ATTEMPTS must be a whole number"):
        RetryPolicy.from_env({"FASTFIT_LOAD_ATTEMPTS": "2.5"})
    with pytest.raises(ValueError, match="FASTFIT_LOAD_BACKOFF must be a number >= 0, got 'soon'"):
        RetryPolicy.from_env({"FASTFIT_LOAD_BACKOFF": "soon"})
    with pytest.raises(ValueError, match="invalid retry policy"):
        RetryPolicy.from_env({"FASTFIT_LOAD_ATTEMPTS": "0"})


def test_lasting_errors_by_type_unless_they_say_otherwise():
    assert is_retryable(TimeoutError()) and is_retryable(RuntimeError("CUDA out of memory"))
    assert not is_retryable(FileNotFoundError("x")) and not is_retryable(KeyError("unet.conv_in.weight"))
    assert is_retryable(ModelsNotFoundError("could not download", retryable=True))
    assert not is_retryable(ModelsNotFoundError("is missing"))


# ---------------------------------------------------------------------------------- service wiring
def test_service_loader_retries_then_serves(engine):
    from server import create_app

    factory = Flaky([ConnectionError("hub reset the connection")], value=engine)
    app = create_app(config={"ENGINE_FACTORY": factory, "LOAD_RETRY": RetryPolicy(attempts=2, first_delay=0.05)})
    app.extensions["fastfit"].loader.join(30)
    assert factory.calls == 2
    assert app.test_client().get("/ready").get_json() == {"status": "ready"}


def test_gunicorn_worker_exits_and_is_restarted_when_the_engine_cannot_load(tmp_path):
    """No models and HF_HUB_OFFLINE: the load fails for good, the worker exits with code 1 and the
    gunicorn master starts another one (which fails the same way)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "FASTFIT_", "GUNICORN_"))}
    env.update(GUNICORN_BIND=f"127.0.0.1:{port}", FASTFIT_MODELS_DIR=str(tmp_path / "Models"),
               FASTFIT_DEVICE="cpu", HF_HUB_OFFLINE="1")
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "server:app"],
                                cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + HANG_LIMIT
            while time.time() < deadline and log_path.read_text().count("exited with code 1") < 2:
                assert proc.poll() is None, log_path.read_text()[-2000:]
                time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(30)
    text = log_path.read_text()
    assert text.count("exited with code 1") >= 2, text[-3000:]
    assert "engine failed to load: ModelsNotFoundError: " in text and "HF_HUB_OFFLINE is set" in text
    assert "exiting the worker with code 1 so that it is restarted" in text


def _readme_first_command() -> str:
    block = (ROOT / "README.md").read_text().split("**1. Install and run**", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    (run,) = [line.strip() for line in block.strip().splitlines() if line.startswith("python ")]
    return run


def test_first_run_without_the_hub_names_the_synthetic_route(tmp_path):
    """A fresh clone (no Models/), the README's first command, no Hub to reach (connection refused):
    exit 1, and the last line says how to go on with synthetic weights, a command that works."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("inference.py", "fastfit_engine", "parse_utils", "fastfit_service", "examples"):
        (clone / name).symlink_to(ROOT / name)
    with socket.socket() as closed:  # a port nobody listens on: connections are refused at once
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    command = _readme_first_command().split()
    assert command[:2] == ["python", "inference.py"]
    env = {**_env(endpoint, tmp_path), "PYTHONPATH": str(clone)}
    proc = subprocess.run([sys.executable, *command[1:]], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=HANG_LIMIT)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ModelsNotFoundError: could not download zhengchong/FastFit-MR-1024 (")
    hint = "python -m fastfit_engine.synthetic Models --tiny"
    assert last.endswith(f"(the images are noise; needs requirements-dev.txt): {hint} (README: Synthetic models)"), last
    assert "Traceback" not in proc.stderr
    # the route it names is the README's and works in that very folder (the failed download left it empty)
    assert hint in (ROOT / "README.md").read_text()
    from fastfit_engine.synthetic import main as synthetic_main

    cwd = os.getcwd()
    os.chdir(clone)
    try:
        assert synthetic_main(hint.split()[3:]) == 0
    finally:
        os.chdir(cwd)
    assert not assets.missing_files(assets.REPOS[0], clone / "Models" / "FastFit-MR-1024")
