"""How busy the GPU was over a load run (deploy/loadtest.py, deploy/load_runs.py): NVML's own
figure, sampled on a thread, where the `nvidia-ml-py` package and a driver are present; without
them the run goes on and the report says why there is no figure."""
from __future__ import annotations

import statistics
import threading


class GpuSampler:
    """Samples NVML's "GPU busy" percentage (time a kernel ran over the last sample period) every
    `period` seconds on a thread; `report()` gives their mean as `gpu_busy_fraction`. Absent NVML,
    `reason` says why."""

    def __init__(self, index: int = 0, period: float = 0.1):
        self.samples: list[int] = []
        self.reason: str | None = None
        self.name: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml  # the nvidia-ml-py package
            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.name = name.decode() if isinstance(name, bytes) else name
        except Exception as e:  # no package, no driver, no GPU: the run goes on without the figure
            self.reason = f"{type(e).__name__}: {e}"[:200]
            return
        self._period = period

    def __enter__(self) -> "GpuSampler":
        if self.reason is None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def report(self) -> dict:
        busy = round(statistics.fmean(self.samples) / 100.0, 4) if self.samples else None
        return {"gpu": self.name, "gpu_busy_fraction": busy, "gpu_samples": len(self.samples),
                "gpu_unmeasured_because": self.reason}
