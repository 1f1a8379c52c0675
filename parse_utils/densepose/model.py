"""GeneralizedRCNN assembly for DensePose R_50_FPN_s1x and the inference constants it runs with.

The constants below are the effective inference configuration of facebookresearch/detectron2's
DensePose R_50_FPN_s1x: detectron2's defaults, DensePose's ``add_densepose_config`` defaults, the
``Base-DensePose-RCNN-FPN.yaml`` and ``densepose_rcnn_R_50_FPN_s1x.yaml`` files (projects/DensePose/
configs), and FastFit's one override (github Zheng-Chong/FastFit): a detection score above 0.8
instead of detectron2's 0.05. Widths are a config so tests can build a narrow network with the same
key names.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .anchors import clip_boxes, nonempty
from .backbone import ResNet
from .densepose_head import (ChartOutput, DensePoseChartPredictor, DensePoseV1ConvXHead, Decoder,
                             pool_densepose_features)
from .fpn import ResNetFPN
from .roi_heads import BOX_LEVELS, BoxHead, BoxPredictor, detect_boxes
from .rpn import RPN

PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
MIN_SIZE_TEST = 800
MAX_SIZE_TEST = 1333
SIZE_DIVISIBILITY = 32
RPN_PRE_NMS_TOPK = 1000
RPN_POST_NMS_TOPK = 1000
RPN_NMS_THRESH = 0.7
SCORE_THRESH_TEST = 0.8
NMS_THRESH_TEST = 0.5
DETECTIONS_PER_IMAGE = 100
BOX_POOLER_RESOLUTION = 7
DENSEPOSE_POOLER_RESOLUTION = 28


@dataclass(frozen=True)
class DensePoseRCNNConfig:
    """Layer widths and depths; the defaults are the published R_50_FPN_s1x network."""

    stem_channels: int = 64
    res2_bottleneck_channels: int = 64
    res2_out_channels: int = 256
    depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    fpn_channels: int = 256
    box_fc_dim: int = 1024
    decoder_conv_dims: int = 256
    decoder_num_classes: int = 256
    head_dim: int = 512
    head_num_convs: int = 8
    num_patches: int = 24
    num_coarse_segm_channels: int = 2

    @classmethod
    def tiny(cls) -> DensePoseRCNNConfig:
        """Same key names and depths, narrow layers: for fast CPU tests."""
        return cls(stem_channels=8, res2_bottleneck_channels=4, res2_out_channels=16,
                   fpn_channels=16, box_fc_dim=32, decoder_conv_dims=16, decoder_num_classes=16,
                   head_dim=16)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]]) -> DensePoseRCNNConfig:
        """Infer widths/depths from checkpoint shapes; falls back to the defaults if keys are absent
        (the strict loader then names what is missing)."""
        try:
            depths = []
            for stage in range(2, 6):
                pat = re.compile(rf"backbone\.bottom_up\.res{stage}\.(\d+)\.conv1\.weight$")
                depths.append(sum(1 for k in shapes if pat.match(k)))
            n_convs = sum(1 for k in shapes
                          if re.match(r"roi_heads\.densepose_head\.body_conv_fcn\d+\.weight$", k))
            return cls(
                stem_channels=int(shapes["backbone.bottom_up.stem.conv1.weight"][0]),
                res2_bottleneck_channels=int(shapes["backbone.bottom_up.res2.0.conv1.weight"][0]),
                res2_out_channels=int(shapes["backbone.bottom_up.res2.0.conv3.weight"][0]),
                depths=tuple(depths),  # type: ignore[arg-type]
                fpn_channels=int(shapes["backbone.fpn_lateral2.weight"][0]),
                box_fc_dim=int(shapes["roi_heads.box_head.fc1.weight"][0]),
                decoder_conv_dims=int(shapes["roi_heads.decoder.p2.0.weight"][0]),
                decoder_num_classes=int(shapes["roi_heads.decoder.predictor.weight"][0]),
                head_dim=int(shapes["roi_heads.densepose_head.body_conv_fcn1.weight"][0]),
                head_num_convs=n_convs,
                num_patches=int(shapes["roi_heads.densepose_predictor.index_uv_lowres.weight"][1]) - 1,
                num_coarse_segm_channels=int(shapes["roi_heads.densepose_predictor.ann_index_lowres.weight"][1]),
            )
        except (KeyError, IndexError, TypeError):
            return cls()


class DensePoseROIHeads(nn.Module):
    """``roi_heads``: the box branch plus the DensePose decoder, head and predictor."""

    def __init__(self, config: DensePoseRCNNConfig) -> None:
        super().__init__()
        c = config
        self.box_head = BoxHead(c.fpn_channels * BOX_POOLER_RESOLUTION ** 2, c.box_fc_dim)
        self.box_predictor = BoxPredictor(c.box_fc_dim, num_classes=1)
        self.decoder = Decoder(c.fpn_channels, c.decoder_conv_dims, c.decoder_num_classes)
        self.densepose_head = DensePoseV1ConvXHead(c.decoder_num_classes, c.head_dim, c.head_num_convs)
        self.densepose_predictor = DensePoseChartPredictor(c.head_dim, c.num_patches,
                                                           c.num_coarse_segm_channels)

    def detect(self, features, proposals: torch.Tensor, image_hw: tuple[int, int]):
        return detect_boxes(self.box_head, self.box_predictor, features, proposals, image_hw,
                            SCORE_THRESH_TEST, NMS_THRESH_TEST, DETECTIONS_PER_IMAGE,
                            BOX_POOLER_RESOLUTION)

    def densepose(self, features, boxes: torch.Tensor) -> ChartOutput:
        decoded = self.decoder([features[k] for k in BOX_LEVELS])
        pooled = pool_densepose_features(decoded, boxes, DENSEPOSE_POOLER_RESOLUTION)
        return self.densepose_predictor(self.densepose_head(pooled))


class Detections(NamedTuple):
    """Boxes (xyxy, in ``image_hw`` pixels) sorted by score, and the DensePose logits of the first
    ``len(chart.fine_segm)`` boxes (None when none was requested or found)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    image_hw: tuple[int, int]
    chart: ChartOutput | None


def network_input_size(h: int, w: int, short: int = MIN_SIZE_TEST, max_size: int = MAX_SIZE_TEST) -> tuple[int, int]:
    """(new_h, new_w) of ResizeShortestEdge: short side to 800, long side capped at 1333, int(v+0.5)."""
    scale = short * 1.0 / min(h, w)
    if h < w:
        newh, neww = float(short), scale * w
    else:
        newh, neww = scale * h, float(short)
    if max(newh, neww) > max_size:
        f = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * f, neww * f
    return int(newh + 0.5), int(neww + 0.5)


def resize_for_network(image_bgr: np.ndarray) -> np.ndarray:
    """PIL BILINEAR resize of a uint8 HxWx3 array to the test size (channel order is irrelevant)."""
    h, w = image_bgr.shape[:2]
    newh, neww = network_input_size(h, w)
    return np.asarray(Image.fromarray(image_bgr).resize((neww, newh), Image.BILINEAR))


class DensePoseRCNN(nn.Module):
    """GeneralizedRCNN with DensePose ROI heads; state-dict keys equal the detectron2 checkpoint's."""

    def __init__(self, config: DensePoseRCNNConfig = DensePoseRCNNConfig()) -> None:
        super().__init__()
        self.config = config
        bottom_up = ResNet(config.stem_channels, config.res2_bottleneck_channels,
                           config.res2_out_channels, config.depths)
        self.backbone = ResNetFPN(bottom_up, config.fpn_channels)
        self.proposal_generator = RPN(config.fpn_channels, RPN_PRE_NMS_TOPK, RPN_POST_NMS_TOPK,
                                      RPN_NMS_THRESH)
        self.roi_heads = DensePoseROIHeads(config)

    @staticmethod
    def normalize_and_pad(image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) raw BGR 0..255 -> (1, 3, Hp, Wp) mean-subtracted, zero-padded to multiples of 32."""
        mean = torch.tensor(PIXEL_MEAN_BGR, dtype=torch.float32, device=image.device).view(3, 1, 1)
        x = image.float() - mean
        h, w = x.shape[-2:]
        hp = -(-h // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
        wp = -(-w // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
        return F.pad(x, (0, wp - w, 0, hp - h), value=0.0)[None]

    @torch.no_grad()
    def forward(self, image: torch.Tensor, output_hw: tuple[int, int] | None = None,
                densepose_instances: str = "first") -> Detections:
        """Detect people in one (3, Hn, Wn) BGR float image at network resolution.

        ``output_hw`` rescales the boxes to that size and drops those that become empty
        (detectron2's detector_postprocess). ``densepose_instances`` is "first" (only the best
        surviving instance, which is all FastFit paints; the head is per-ROI so its result is
        identical), "all", or "none".
        """
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(image.shape)}")
        if densepose_instances not in ("first", "all", "none"):
            raise ValueError(f"densepose_instances must be 'first', 'all' or 'none', got {densepose_instances!r}")
        net_hw = (int(image.shape[1]), int(image.shape[2]))
        features = self.backbone(self.normalize_and_pad(image))
        proposals, _ = self.proposal_generator(features, net_hw)
        boxes, scores = self.roi_heads.detect(features, proposals, net_hw)
        out_boxes, out_hw = boxes, net_hw
        if output_hw is not None:
            out_hw = (int(output_hw[0]), int(output_hw[1]))
            out_boxes = boxes.clone()
            out_boxes[:, 0::2] *= out_hw[1] / net_hw[1]
            out_boxes[:, 1::2] *= out_hw[0] / net_hw[0]
            out_boxes = clip_boxes(out_boxes, out_hw)
            keep = nonempty(out_boxes)
            boxes, out_boxes, scores = boxes[keep], out_boxes[keep], scores[keep]
        n = boxes.shape[0]
        count = {"first": min(n, 1), "all": n, "none": 0}[densepose_instances]
        chart = self.roi_heads.densepose(features, boxes[:count]) if count else None
        return Detections(out_boxes, scores, out_hw, chart)


def build_model(config: DensePoseRCNNConfig = DensePoseRCNNConfig(),
                device: torch.device | str = "cpu") -> DensePoseRCNN:
    """Construct the network on ``device`` (``"meta"`` gives shapes without memory), in eval mode."""
    with torch.device(device):
        model = DensePoseRCNN(config)
    return model.eval()
