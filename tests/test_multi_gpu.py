"""Several devices on one host: device assignment, and routing through the real nginx to real
gunicorn instances (CPU instances stand in for GPUs)."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import multipart_body
from _front_helpers import Stack, get, loadtest, require_nginx, slow_clients
from fastfit_service import instances, nginx_front


def test_fastfit_devices_parsing():
    assert instances.parse_devices(None, ["0", "1"]) == ["0", "1"]  # default: every visible GPU
    assert instances.parse_devices("all", ["0", "1", "2"]) == ["0", "1", "2"]
    assert instances.parse_devices("", []) == ["cpu"]  # no GPU: one CPU instance
    assert instances.parse_devices("1, 0", ["0", "1"]) == ["1", "0"]
    assert instances.parse_devices("cpu,cpu", []) == ["cpu", "cpu"]
    for bad, words in [("0,0", "listed twice"), ("0,,1", "empty entry"), ("cuda:1", "by index"),
                       ("3", "not visible")]:
        with pytest.raises(instances.LaunchError, match=words):
            instances.parse_devices(bad, ["0", "1"])


def test_visible_gpus_follow_cuda_visible_devices():
    assert instances.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert instances.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert instances.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}) == ["GPU-aa", "GPU-bb"]


def test_each_instance_is_pinned_to_its_gpu_on_its_own_loopback_port():
    env = {"CUDA_VISIBLE_DEVICES": "4,5", "FASTFIT_BACKEND_PORT_BASE": "9100", "PORT": "8000"}
    planned = instances.plan_instances(env)
    assert [(i.device, i.port) for i in planned] == [("4", 9100), ("5", 9101)]
    envs = [instances.instance_env(env, i) for i in planned]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["4", "5"]  # set before the process starts
    assert all(e["FASTFIT_DEVICE"] == "cuda:0" for e in envs)  # the one GPU each process sees
    assert [e["GUNICORN_BIND"] for e in envs] == ["127.0.0.1:9100", "127.0.0.1:9101"]
    assert "PORT" not in envs[0]
    cpu = instances.instance_env({}, instances.Instance(0, "cpu", 9100))
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and cpu["FASTFIT_DEVICE"] == "cpu"


def test_rendered_front_is_least_connections_with_a_cap_per_instance(tmp_path):
    require_nginx()
    env = {"FASTFIT_DEVICES": "cpu,cpu,cpu", "FASTFIT_QUEUE_SIZE": "3", "FASTFIT_LISTEN": "127.0.0.1:18999",
           "FASTFIT_BACKEND_PORT_BASE": "19100"}
    text = nginx_front.render_nginx_config(env, instances.plan_instances(env), str(tmp_path))
    prompt_upstream = text.split("upstream fastfit_prompt {", 1)[1].split("}", 1)[0]
    assert "least_conn;" in prompt_upstream
    assert [line.strip() for line in prompt_upstream.splitlines() if "server " in line] == [
        f"server 127.0.0.1:{p} max_conns=4;" for p in (19100, 19101, 19102)]  # one running + 3 waiting
    assert "proxy_request_buffering on;" in text and "server_tokens off;" in text
    assert "proxy_next_upstream error timeout http_503 non_idempotent;" in text
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    nginx = nginx_front.nginx_binary(os.environ)
    check = subprocess.run([nginx, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # the real nginx accepts it


def _prompt_request(sample_files, steps: int) -> tuple[bytes, dict]:
    body, ctype = multipart_body({"person": sample_files["person"], "bag": sample_files["bag"]},
                                 {"steps": str(steps), "seed": "3", "guidance_scale": "1"})
    return body, {"Content-Type": ctype}


def _gunicorn_pids(launcher_pid: int, instance: int) -> tuple[int, list[int]]:
    """(master pid, worker pids) of one instance, found through /proc."""
    children = loadtest._children  # the load tool finds processes the same way

    for pid in children(launcher_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FASTFIT_INSTANCE={instance}".encode() in environ:
            return pid, children(pid)
    raise AssertionError(f"instance {instance} not found")


def test_busy_instance_is_skipped_and_a_killed_worker_disturbs_nothing(models_dir, sample_files, tmp_path):
    stack = Stack(tmp_path, models_dir, "cpu,cpu", {"GUNICORN_THREADS": "4", "FASTFIT_QUEUE_SIZE": "1"})
    try:
        stack.wait("/ready", 200, 120)
        addresses = {url.removeprefix("http://") for url in stack.instances}

        # one long request makes an instance busy; the next request must go to the idle one
        long_body, headers = _prompt_request(sample_files, steps=3)
        results = {}
        first = threading.Thread(target=lambda: results.setdefault(
            "long", slow_clients.timed_request(stack.front + "/prompt", long_body, headers, timeout=240)))
        first.start()
        busy = None
        for _ in range(100):
            for i in range(2):
                if b"fastfit_inflight 1.0" in get(f"{stack.front}/instances/{i}/metrics")[1]:
                    busy = i
            if busy is not None:
                break
            time.sleep(0.1)
        assert busy is not None, "the long request never started"
        short_body, headers = _prompt_request(sample_files, steps=1)
        short = slow_clients.timed_request(stack.front + "/prompt", short_body, headers, timeout=240)
        first.join(240)
        assert short[0] == 200 and results["long"][0] == 200, (short[:2], results["long"][:2])
        deadline = time.time() + 10  # nginx writes a request's log line just after its answer
        while len(log := [e for e in stack.access_entries() if e["uri"] == "/prompt"]) < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert len(log) == 2 and {e["upstream"] for e in log} == addresses, log  # one each
        # the short request (found by the request id the app echoes) went to the idle instance
        short_id = {k.lower(): v for k, v in short[2].items()}["x-request-id"]
        short_entry = [e for e in log if e["request_id"] == short_id]
        assert len(short_entry) == 1, (short_id, log)
        assert short_entry[0]["upstream"] == stack.instances[1 - busy].removeprefix("http://")

        # a worker killed on one instance: requests still succeed, the other instance is untouched
        master, workers = _gunicorn_pids(stack.proc.pid, 0)
        other_master, other_workers = _gunicorn_pids(stack.proc.pid, 1)
        os.kill(workers[0], signal.SIGKILL)
        ok = slow_clients.timed_request(stack.front + "/prompt", short_body, headers, timeout=240)
        assert ok[0] == 200, ok[:2]
        assert stack.proc.poll() is None and _gunicorn_pids(stack.proc.pid, 1) == (other_master, other_workers)

        # a whole instance gone: the launcher stops the rest and exits non-zero (the runtime restarts it)
        os.kill(master, signal.SIGKILL)
        stack.proc.wait(30)
        assert stack.proc.returncode == 1
        assert "instance 0 exited" in stack.output()
        assert get(stack.instances[1] + "/health", timeout=2)[0] is None  # the rest was stopped
    finally:
        stack.stop()


def test_port_blocks_lie_below_the_ephemeral_range():
    """The launcher's ports are chosen where no outgoing connection takes its local port."""
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for n in (1, 3, 9):
        base = loadtest.free_port_block(n)
        assert 10000 <= base and base + n <= low
        socks = [socket.socket() for _ in range(n)]
        try:
            for port, sock in zip(range(base, base + n), socks):
                sock.bind(("127.0.0.1", port))  # all n are free
        finally:
            for sock in socks:
                sock.close()
