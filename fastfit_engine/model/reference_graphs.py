"""CUDA graphs of a garment's conditional reference pass, one per reference size.

Why: a reference pass is an eager UNet forward of about 1000 small kernels, host-bound when run
alone; a captured graph launches the same kernels in one call and leaves the host free. The compiled
denoising step cannot take the pass over: the pass stores K/V at offsets that depend on the
request and stops after the last caching layer. A graph can, by storing into staging buffers of
its own, captured once per reference size, which are then copied into the request's slot, the
very copy a garment-cache hit makes.

A request is a few percent faster with graphs (bench/README.md, "Reference-pass CUDA graphs").

Exactness: a replay runs the kernels the eager pass ran at capture, on the same shapes and
inputs, so its K/V are the eager pass's bit for bit (``bench_request`` checks a whole image
against the eager pass on the GPU, ``reference_graphs_equal_eager``).

Graphs are captured by :meth:`ReferenceGraphs.capture` (the engine's warm-up), never inside a
request, and sizes without a graph run eagerly. Memory: the staging K/V of one reference per
size (138.6 MB person-size, 34.7 MB half-size at 768x1024 in bf16) plus the graphs' shared pool
(one pass's activations). ``graphs=False`` keeps the staging path without capturing: it runs
the eager pass into the staging buffers, which is how the CPU tests check the staging and copy.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

__all__ = ["ReferenceGraphs"]

log = logging.getLogger("fastfit.reference_graphs")


@dataclass
class _Entry:
    latent: torch.Tensor  # static input [1, C, h, w]
    label: torch.Tensor  # static input [1] (int64)
    buffers: list[tuple[torch.Tensor, torch.Tensor]]  # per caching layer: the side request's K, V buffers
    staging: list[tuple[torch.Tensor, torch.Tensor]]  # per caching layer: K, V views [tokens, channels]
    graph: torch.cuda.CUDAGraph | None


class ReferenceGraphs:
    """Conditional reference passes of ``unet`` replayed from CUDA graphs (or, with
    ``graphs=False``, run eagerly through the same staging buffers)."""

    def __init__(self, unet: torch.nn.Module, graphs: bool = True) -> None:
        self.unet = unet
        self.graphs = graphs
        self._entries: dict[tuple, _Entry] = {}
        self._pool = None

    def _key(self, latent_hw: tuple[int, int], dtype: torch.dtype, device: torch.device) -> tuple:
        return (tuple(int(x) for x in latent_hw), dtype, str(torch.device(device)))

    def captured(self, latent_hw: tuple[int, int], dtype: torch.dtype, device: torch.device) -> bool:
        return self._key(latent_hw, dtype, device) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def capture(self, latent_hw: tuple[int, int], channels: int, dtype: torch.dtype, device: torch.device) -> None:
        """Capture (or, without graphs, prepare) the pass for references of ``latent_hw`` (h, w).

        Not while a request holds the K/V cache: the capture runs on a side request of its own,
        but a graph capture must not overlap other work of this thread. A capture that fails is
        logged and leaves that size eager.
        """
        key = self._key(latent_hw, dtype, device)
        if key in self._entries:
            return
        cache = self.unet.kv_cache
        if cache.request is not None:
            raise RuntimeError("reference graphs are captured between requests, not inside one")
        device = torch.device(device)
        latent = torch.zeros((1, channels, *key[0]), device=device, dtype=dtype)
        label = torch.zeros((1,), device=device, dtype=torch.int64)
        graph = None
        with cache.side_request(1, (1, 1), [key[0]]):
            # one eager pass: allocates the staging buffers and, before a capture, initialises
            # what must not be set up while capturing (library handles, workspaces, kernel JIT)
            self.unet.forward_reference(latent, label, [0], rows=[0])
            if self.graphs:
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                graph = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(graph, pool=self._pool):
                        self.unet.forward_reference(latent, label, [0], rows=[0])
                except RuntimeError as exc:  # an optimisation only: this size's passes stay eager
                    log.warning("reference pass of %dx%d latents stays eager: %s", *key[0], exc)
                    return
            buffers = [(proc.k_buf, proc.v_buf) for proc in cache.processors]
            staging = [proc.slot(0, 0) for proc in cache.processors]
        self._entries[key] = _Entry(latent, label, buffers, staging, graph)

    def run(self, label: int, latent: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The conditional K/V of one reference (views of the staging buffers, valid until the
        next run of the same size), or None when no graph was captured for its size."""
        entry = self._entries.get(self._key(latent.shape[-2:], latent.dtype, latent.device))
        if entry is None:
            return None
        entry.latent.copy_(latent)
        entry.label.fill_(int(label))
        if entry.graph is not None:
            entry.graph.replay()
        else:
            cache = self.unet.kv_cache
            with cache.side_request(1, (1, 1), [tuple(latent.shape[-2:])]):
                for proc, (k_buf, v_buf) in zip(cache.processors, entry.buffers):
                    proc.k_buf, proc.v_buf = k_buf, v_buf  # the pass stores straight into the staging
                self.unet.forward_reference(entry.latent, entry.label, [0], rows=[0])
        return entry.staging

    def clear(self) -> None:
        """Drop every graph and staging buffer (e.g. after changing the UNet weights)."""
        self._entries.clear()
        self._pool = None
