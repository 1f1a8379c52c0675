"""DWPose's ONNX graphs as torch modules, behind the part of onnxruntime's session API DWPose uses.

Why: on a GPU host, DWPose on onnxruntime's CPU provider is the longest of the person parsers,
and a cold request waits for it after its garment work; on the GPU these modules take about a
sixth of its time (H200, 2026-12-04; bench/README.md, "DWPose on the GPU"). No second copy of
the weights, no onnxruntime-gpu CUDA stack, no re-export: the session reads the very
``yolox_l.onnx`` and ``dw-ll_ucoco_384.onnx`` files the onnxruntime path reads.

The graph is turned into a ``torch.fx.GraphModule`` by the ONNX->torch converter onnx2torch
(onnx2pytorch 0.6 also runs these graphs, but keeps every initializer as a buffer beside the
layers' own weights, twice the memory, and interprets the graph node by node on each call),
after two rewrites that keep the graph's meaning but that onnx2torch 1.5.15 cannot take as they
are (PyTorch's TorchScript ONNX exporter, with which YOLOX and RTMPose models are exported,
writes both; the cost-equivalent graphs of bench/proxies/dwpose.py have both):

- an ``Identity`` whose input is an initializer (the exporter shares equal weights, e.g. two
  all-zero biases, that way) becomes an initializer under the Identity's output name, since
  onnx2torch reads convolution weights and biases from initializers only;
- trailing omitted optional inputs (empty names, e.g. ``Clip`` with a minimum and no maximum,
  which is how ``clamp(min=eps)`` is exported) are dropped, which ONNX defines as the same node.

:class:`TorchOnnxSession` answers ``get_inputs()``, ``get_outputs()``, ``get_providers()`` and
``run(None, feed)`` like ``onnxruntime.InferenceSession``, so the detector's and the pose
estimator's pre- and post-processing (letterbox, crop, YOLOX and SimCC decoding, NMS) are the
same code whichever runtime runs the network.

Deliberate differences from onnxruntime's CPU provider: the arithmetic is PyTorch's, so raw
outputs differ by float rounding and an arg-max over two nearly equal SimCC bins can land one
bin (half a crop pixel) away. Float32 convolutions run without TF32 (cuDNN's process-wide switch
is turned off while a graph is called, under the lock that DensePose and SCHP take around
theirs: ``parse_utils.base.float32_gpu_work``): every keypoint and the drawing are then
identical to onnxruntime's in the bench run, against most but not all with PyTorch's default
TF32, a little faster. ``torch.compile`` is not offered: dynamo rejects onnx2torch 1.5.15's ``Reshape``, which builds a ``torch.Size`` from a tensor.
Optional ``dtype`` float16/bfloat16 runs the network under ``torch.autocast`` (convolutions and
matrix products in half precision, the weights and every other op as the graph has them, so
integer-valued float constants such as a ``Range`` stay exact); outputs come back as float32. It
was barely faster and left far fewer keypoints identical in the bench run, so float32 is the
default.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import onnx
import torch

from ..base import float32_gpu_work

# onnx2torch 1.5.15 slices with a list of slices, which PyTorch warns about once per process;
# the parity tests (tests/test_dwpose_torch.py) would catch the day its meaning changes.
warnings.filterwarnings(
    "ignore", message="Using a non-tuple sequence for multidimensional indexing", category=UserWarning
)

__all__ = ["GraphValue", "TorchOnnxSession", "prepare_for_conversion"]


class GraphValue(NamedTuple):
    """A graph input or output as onnxruntime's NodeArg shows it: name and shape (a str per free dim)."""

    name: str
    shape: list[int | str]


def _values(values: Sequence[onnx.ValueInfoProto], skip: set[str]) -> list[GraphValue]:
    out = []
    for value in values:
        if value.name in skip:
            continue
        dims = value.type.tensor_type.shape.dim
        out.append(GraphValue(value.name, [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]))
    return out


def prepare_for_conversion(model: onnx.ModelProto) -> onnx.ModelProto:
    """The two meaning-preserving rewrites of the module docstring, in place; returns ``model``."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    graph_outputs = {value.name for value in graph.output}
    kept = []
    for node in graph.node:
        source = node.input[0] if node.op_type == "Identity" and len(node.input) == 1 else None
        if source in initializers and node.output[0] not in graph_outputs:
            alias = onnx.TensorProto()
            alias.CopyFrom(initializers[source])
            alias.name = node.output[0]
            graph.initializer.append(alias)
            initializers[alias.name] = alias
            continue
        while len(node.input) and node.input[-1] == "":
            node.input.pop()
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return model


class TorchOnnxSession:
    """One ONNX file run as a torch module on ``device`` (float32 unless ``dtype`` says otherwise).

    On CUDA the module runs on a stream of its own, so it overlaps the work other threads queue
    on theirs (the engine runs DWPose on a worker thread beside the garment work and the other
    parsers); ``run`` returns only once its outputs are on the host.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from onnx2torch import convert

        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        model = onnx.load(str(path))
        initializer_names = {tensor.name for tensor in model.graph.initializer}
        self._inputs = _values(model.graph.input, initializer_names)
        self._outputs = _values(model.graph.output, set())
        self.device = torch.device(device)
        self.dtype = dtype
        module = convert(prepare_for_conversion(model)).eval()
        del model
        self.module = module.to(device=self.device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def get_inputs(self) -> list[GraphValue]:
        return list(self._inputs)

    def get_outputs(self) -> list[GraphValue]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        """What runs the graph, in the shape of onnxruntime's provider list (for reports)."""
        return [f"torch:{self.device}:{str(self.dtype).removeprefix('torch.')}"]

    def _on_stream(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _precision(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def run(self, output_names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs (all, or those named, in that order) as float32 numpy arrays."""
        missing = [value.name for value in self._inputs if value.name not in feed]
        if missing:
            raise ValueError(f"missing graph inputs: {missing}")
        with torch.inference_mode(), self._on_stream():
            args = [torch.from_numpy(np.asarray(feed[value.name])).to(self.device) for value in self._inputs]
            with float32_gpu_work(tf32=False), self._precision():
                result = self.module(*args)
            tensors = list(result) if isinstance(result, (list, tuple)) else [result]
            if len(tensors) != len(self._outputs):
                declared = len(self._outputs)
                raise RuntimeError(f"the converted graph gave {len(tensors)} outputs, the ONNX file declares {declared}")
            arrays = [t.float().cpu().numpy() for t in tensors]
        if output_names is None:
            return arrays
        index = {value.name: i for i, value in enumerate(self._outputs)}
        return [arrays[index[name]] for name in output_names]

