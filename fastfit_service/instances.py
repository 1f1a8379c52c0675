"""One gunicorn instance per device: which devices, which loopback ports, which environment.

`FASTFIT_DEVICES` picks the devices: unset or `all` is every visible GPU (`CUDA_VISIBLE_DEVICES`
if set, else `nvidia-smi`), or the CPU when there is none; `0,1` are GPU indices (or UUIDs);
`cpu` or `cpu,cpu` run CPU instances (tests use them as fake devices). Each instance is started
with `CUDA_VISIBLE_DEVICES` set to its one GPU, so CUDA in that process only ever sees its GPU.
The launcher (launch.py) starts them; nothing here starts a process. No counterpart in the
reference implementation, which serves one Gradio app on one GPU.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from fastfit_engine.settings import read

__all__ = ["Instance", "LaunchError", "instance_env", "no_gpu_warning", "parse_devices", "plan_instances",
           "visible_gpus"]


class LaunchError(Exception):
    """A launcher setting or a start-up step the operator must fix (the launcher prints it as one line)."""


def visible_gpus(env: dict[str, str]) -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    if "CUDA_VISIBLE_DEVICES" in env:  # CUDA's own variable: set but empty means no GPU
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def parse_devices(spec: str | None, visible: list[str]) -> list[str]:
    """FASTFIT_DEVICES -> one entry per instance: a GPU id as CUDA_VISIBLE_DEVICES names it, or 'cpu'."""
    spec = (spec or "").strip()
    if spec in ("", "all"):
        return list(visible) or ["cpu"]
    devices = [d.strip() for d in spec.split(",")]
    if any(not d for d in devices):
        raise LaunchError(f"FASTFIT_DEVICES={spec!r}: an empty entry (write e.g. '0,1', 'all' or 'cpu')")
    gpus = [d for d in devices if d != "cpu"]
    if len(set(gpus)) != len(gpus):
        raise LaunchError(f"FASTFIT_DEVICES={spec!r}: a GPU is listed twice (one engine per GPU)")
    for d in gpus:
        if d.startswith("cuda"):
            raise LaunchError(f"FASTFIT_DEVICES={spec!r}: name GPUs by index or UUID, e.g. '0,1', not {d!r}")
        if visible and d not in visible:
            raise LaunchError(f"FASTFIT_DEVICES={spec!r}: GPU {d!r} is not visible (visible: {','.join(visible)})")
    return devices


@dataclass
class Instance:
    index: int
    device: str  # GPU id or "cpu"
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def no_gpu_warning(env: dict[str, str], instances: list[Instance]) -> str | None:
    """The loud start-up line when `all` GPUs (the default) came to none and the stack falls back to
    one CPU instance (minutes a request): usually a container started without its GPUs."""
    spec = read("FASTFIT_DEVICES", env) or ""
    if spec not in ("", "all") or [i.device for i in instances] != ["cpu"]:
        return None
    if "CUDA_VISIBLE_DEVICES" in env:
        why = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r} names none"
    elif shutil.which("nvidia-smi") is None:
        why = "nvidia-smi is not installed here (a container started without --gpus / the NVIDIA runtime?)"
    else:
        why = "nvidia-smi lists none"
    return (f"WARNING: FASTFIT_DEVICES={spec or 'all'} found no GPU ({why}): running ONE instance on the CPU, "
            "minutes a request; give the container its GPUs (docker run --gpus all, the NVIDIA Container "
            "Toolkit) or set FASTFIT_DEVICES=cpu to mean it")


def plan_instances(env: dict[str, str]) -> list[Instance]:
    devices = parse_devices(read("FASTFIT_DEVICES", env), visible_gpus(env))
    base = read("FASTFIT_BACKEND_PORT_BASE", env)
    return [Instance(i, d, base + i) for i, d in enumerate(devices)]


def instance_env(env: dict[str, str], inst: Instance) -> dict[str, str]:
    """The environment of one gunicorn instance: pinned to its device before anything imports torch."""
    out = dict(env)
    out["GUNICORN_BIND"] = inst.address  # loopback only: clients reach it through the front
    out["FASTFIT_INSTANCE"] = str(inst.index)
    if inst.device == "cpu":
        out["CUDA_VISIBLE_DEVICES"] = ""
        out["FASTFIT_DEVICE"] = "cpu"
    else:
        out["CUDA_VISIBLE_DEVICES"] = inst.device
        out["FASTFIT_DEVICE"] = "cuda:0"  # the one GPU this process sees
    out.pop("PORT", None)
    return out
