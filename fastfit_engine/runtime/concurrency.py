"""The concurrency model of one engine, in one place: its threads, its stream and its locks.

- **The GPU lock** (`FastFitEngine.gpu_lock`, a plain lock): the only lock around model work.
  The engine takes it around each `run` / `preview` / warm-up; the service's admission takes
  the same lock for a whole GPU turn (waiting in its bounded queue) and then calls the engine
  with `lock_held=True`. Whoever holds it owns the pipeline and everything it touches.
- **The preparation slot** (`Service.prepare_slot`, service only, with FASTFIT_OVERLAP on): the
  one request allowed to do its host-side work before its GPU turn (`FastFitEngine.prepare`:
  the person's crop, DWPose, DensePose, SCHP and the mask; the garments' resizes and keys) while
  another request holds the GPU lock; it keeps the slot until it has the GPU lock, so at most
  one prepared request waits (about 12 MiB of host memory at 768x1024: the person photo, the
  pose drawing, the parser maps and masks, two garment references). The garments' VAE encodes
  and reference passes are not prepared: they use the pipeline.
- **The request thread** (the CLI's main thread, or the gunicorn thread holding the lock): the
  garments' VAE encodes and reference passes, the denoising loop, the VAE decode, on the default
  CUDA stream. The pipeline is single-threaded by construction (one set of reference K/V
  buffers, an unguarded unconditional-reference memo, CUDA-graph staging buffers valid until
  the next run): only this thread calls it. With the overlap, the preparing gunicorn thread
  waits for its own person work (and on a CPU runs the parsers itself), outside the lock.
- **`fastfit-prep` threads** (one per garment slot): a garment's resize and cache key; they touch
  that garment's image only.
- **`fastfit-pose` thread** (one): DWPose, on the GPU (torch modules, on their own stream) or
  the CPU (onnxruntime). On the GPU it turns cuDNN's TF32 switch off while it launches a graph
  (`parse_utils.base.float32_gpu_work`); with the overlap that window can fall inside another
  request's denoising, which it does not change: the switch filters cuDNN's engines for float32
  convolutions only (the diffusion's are bfloat16/float16, algorithms from cuDNN's heuristics,
  `cudnn.benchmark` stays off), the float32 matmul setting is never touched, and dynamo does
  not guard on the switch (tests/test_overlap.py), so the compiled step neither recompiles nor
  changes.
- **`fastfit-parse` thread** (one, used on CUDA): DensePose, SCHP and the mask on the engine's
  parser stream, beside the request thread's garment work, or beside another request's GPU turn
  when prepared. Its kernels share the GPU with the denoising (the GPU is otherwise idle while
  the host prepares); the peak VRAM a request reports then includes the parsers' activations.
- **Caches** (`LRUCache`) have a small lock of their own, for `/metrics` and preparing threads.

A request that stops early (a passed deadline, a client gone: an exception from its `check` or
`progress` callback, also while it is being prepared) waits for the pose and parser work it
started before it releases the GPU lock or the preparation slot (`settle`), so nothing it left
behind delays or shares the GPU with the next request. Each parser serves one thread at a
time: DWPose only ever runs on the pose thread, and DensePose, SCHP and the mask run under the
person preparer's parse lock (on CUDA always on the parser thread; on a CPU on the collecting
thread, which with the overlap may be a preparing request's beside a preview's).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def holding(lock: threading.Lock, held: bool) -> Iterator[None]:
    """Hold ``lock`` for the block, unless the caller says it holds it already (``held``)."""
    if held:
        yield
        return
    with lock:
        yield


class WorkerJob(Generic[T]):
    """A call that runs on a worker thread once started, else here on the first ``result()``
    (once: a second ``result()`` gives the same value)."""

    def __init__(self, fn: Callable[..., T], *args: Any) -> None:
        self._call = (fn, args)
        self._future: Future | None = None
        self.ran_here = False  # result() ran the call on the calling thread
        self._value: T | None = None

    def start(self, worker: ThreadPoolExecutor) -> WorkerJob[T]:
        fn, args = self._call
        self._future = worker.submit(fn, *args)
        return self

    def result(self) -> T:
        if self._future is None:
            if not self.ran_here:
                fn, args = self._call
                self.ran_here = True
                self._value = fn(*args)
            return self._value  # type: ignore[return-value]
        return self._future.result()

    def wait(self, check: Callable[[], None] | None, poll: float = 0.05) -> None:
        """Until the call has finished (here, if it was never started), calling ``check()`` every
        ``poll`` seconds meanwhile; ``check`` may raise to stop waiting (the call keeps running:
        ``settle`` it). The call's own exception is raised here."""
        if self._future is None or check is None:
            self.result()
            return
        while True:
            try:
                self._future.result(timeout=poll)
                return
            except TimeoutError:
                check()

    def settle(self) -> None:
        """Drop the call if it has not started; else wait until it has finished, whatever its outcome."""
        if self._future is not None and not self._future.cancel():
            futures_wait([self._future])
