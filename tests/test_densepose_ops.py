"""DensePose building blocks checked against independent computations on constructed inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from parse_utils.densepose.anchors import SCALE_CLAMP, cell_anchors, clip_boxes, decode_boxes, grid_anchors
from parse_utils.densepose.backbone import ConvFrozenBN
from parse_utils.densepose.densepose_head import pool_densepose_features
from parse_utils.densepose.model import DensePoseRCNN, DensePoseRCNNConfig, build_model, network_input_size
from parse_utils.densepose.postprocess import int_box_xywh, instance_labels, paint_first_instance
from parse_utils.densepose.roi_heads import assign_boxes_to_levels, multilevel_roi_align


# ---------------------------------------------------------------- anchors
def test_cell_anchors_unrounded_in_ratio_order():
    got = cell_anchors(32.0).numpy()
    r2 = math.sqrt(2.0)
    expected = np.array([
        [-16 * r2, -8 * r2, 16 * r2, 8 * r2],       # ratio 0.5: 45.2548 x 22.6274
        [-16, -16, 16, 16],
        [-8 * r2, -16 * r2, 8 * r2, 16 * r2],       # ratio 2: 22.6274 x 45.2548
    ])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    widths = got[:, 2] - got[:, 0]
    assert widths[0] == pytest.approx(45.2548, abs=1e-4)  # not rounded to 45 or 46


def test_grid_anchors_offset_zero_row_major():
    cell = cell_anchors(64.0)
    h, w, stride = 2, 3, 8
    got = grid_anchors(cell, stride, (h, w)).numpy()
    assert got.shape == (h * w * 3, 4)
    c = cell.numpy()
    for i in range(h):
        for j in range(w):
            for a in range(3):
                row = got[(i * w + j) * 3 + a]
                shift = np.array([j * stride, i * stride, j * stride, i * stride], dtype=np.float32)
                np.testing.assert_allclose(row, shift + c[a], atol=1e-5)


# ---------------------------------------------------------------- box decoding
def _decode_reference(deltas, boxes, weights):
    out = np.zeros_like(deltas, dtype=np.float64)
    for n in range(boxes.shape[0]):
        x1, y1, x2, y2 = boxes[n].astype(np.float64)
        bw, bh = x2 - x1, y2 - y1
        cx, cy = x1 + bw / 2, y1 + bh / 2
        for k in range(deltas.shape[1] // 4):
            dx, dy, dw, dh = deltas[n, 4 * k:4 * k + 4] / np.array(weights)
            dw, dh = min(dw, math.log(1000 / 16)), min(dh, math.log(1000 / 16))
            pcx, pcy = dx * bw + cx, dy * bh + cy
            pw, ph = math.exp(dw) * bw, math.exp(dh) * bh
            out[n, 4 * k:4 * k + 4] = [pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2]
    return out


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_decode_boxes_matches_reference(weights):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (20, 2))
    wh = rng.uniform(1, 200, (20, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    deltas = rng.normal(0, 1.0, (20, 4)).astype(np.float32)
    deltas[0, 2] = 50.0  # must be clamped to log(1000/16) after dividing by the weight
    deltas[1, 3] = 80.0
    got = decode_boxes(torch.from_numpy(deltas), torch.from_numpy(boxes), weights).numpy()
    np.testing.assert_allclose(got, _decode_reference(deltas, boxes, weights), rtol=1e-5, atol=1e-3)
    assert SCALE_CLAMP == pytest.approx(4.135166556742356)


def test_clip_includes_width_and_height():
    boxes = torch.tensor([[-5.0, -1.0, 900.0, 700.0], [10.0, 20.0, 30.0, 40.0]])
    got = clip_boxes(boxes, (600, 800))
    assert got.tolist() == [[0.0, 0.0, 800.0, 600.0], [10.0, 20.0, 30.0, 40.0]]


# ---------------------------------------------------------------- levels and pooling
def test_level_assignment_detectron2_rule():
    sides = [224.0, 448.0, 112.0, 111.9, 10.0, 2000.0, 447.9, 223.9]
    boxes = torch.tensor([[5.0, 7.0, 5.0 + s, 7.0 + s] for s in sides])
    expected = [min(5, max(2, math.floor(4 + math.log2(s / 224 + 1e-8)))) for s in sides]
    assert expected == [4, 5, 3, 2, 2, 5, 4, 3]
    assert assign_boxes_to_levels(boxes).tolist() == expected
    # area uses no +1: a 224 x 56 box has sqrt(area) = 112 -> level 3
    assert assign_boxes_to_levels(torch.tensor([[0.0, 0.0, 224.0, 56.0]])).tolist() == [3]


def _coordinate_maps(h, w):
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs, ys])[None]  # channel 0 = column index, channel 1 = row index


def _expected_pool(box, scale, res):
    """Mean of sample points of an aligned=False ROIAlign on a linear map: the bin centres."""
    x1, y1, x2, y2 = [v * scale for v in box]
    bw, bh = (x2 - x1) / res, (y2 - y1) / res
    cx = x1 + (np.arange(res) + 0.5) * bw
    cy = y1 + (np.arange(res) + 0.5) * bh
    return np.stack([np.tile(cx, (res, 1)), np.tile(cy[:, None], (1, res))])


def test_multilevel_roi_align_picks_level_and_scale():
    feats = [_coordinate_maps(256 // 2 ** i, 256 // 2 ** i) for i in range(4)]  # strides 4..32
    boxes = torch.tensor([[40.0, 60.0, 100.0, 120.0],      # side 60 -> P2
                          [100.0, 80.0, 260.0, 240.0],     # side 160 -> P3
                          [120.0, 100.0, 420.0, 400.0],    # side 300 -> P4
                          [64.0, 96.0, 704.0, 736.0]])     # side 640 -> P5
    levels = assign_boxes_to_levels(boxes).tolist()
    assert levels == [2, 3, 4, 5]
    got = multilevel_roi_align(feats, boxes, 7).numpy()
    for n, level in enumerate(levels):
        exp = _expected_pool(boxes[n].tolist(), 2.0 ** -level, 7)
        np.testing.assert_allclose(got[n], exp, atol=1e-4)


def test_densepose_pooler_scale_quarter_unaligned():
    feat = _coordinate_maps(100, 120)
    box = [30.0, 50.0, 250.0, 330.0]
    got = pool_densepose_features(feat, torch.tensor([box]), 28).numpy()[0]
    np.testing.assert_allclose(got, _expected_pool(box, 0.25, 28), atol=1e-4)


# ---------------------------------------------------------------- backbone details
def test_frozen_bn_formula_and_stride_in_1x1():
    layer = ConvFrozenBN(3, 4, 1).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 3, 1, 1, generator=g))
        for name in ("weight", "bias", "running_mean"):
            getattr(layer.norm, name).copy_(torch.randn(4, generator=g))
        layer.norm.running_var.copy_(torch.rand(4, generator=g) + 0.1)
    x = torch.randn(1, 3, 5, 5, generator=g)
    y = torch.nn.functional.conv2d(x, layer.weight)
    n = layer.norm
    ref = (y - n.running_mean.view(1, -1, 1, 1)) / torch.sqrt(n.running_var.view(1, -1, 1, 1) + 1e-5) \
        * n.weight.view(1, -1, 1, 1) + n.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)

    model = build_model(DensePoseRCNNConfig(), "meta")
    bu = model.backbone.bottom_up
    for stage in ("res3", "res4", "res5"):
        block = getattr(bu, stage)[0]
        assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
        assert block.shortcut.stride == (2, 2)
    assert bu.res2[0].conv1.stride == (1, 1) and bu.res2[0].shortcut.stride == (1, 1)
    assert bu.res2[1].shortcut is None


def test_feature_shapes_of_worked_example():
    model = build_model(DensePoseRCNNConfig.tiny(), "meta")
    assert network_input_size(512, 384) == (1067, 800)
    assert network_input_size(384, 512) == (800, 1067)
    assert network_input_size(100, 100) == (800, 800)
    assert network_input_size(100, 1000) == (133, 1333)  # long side capped
    x = DensePoseRCNN.normalize_and_pad(torch.zeros(3, 1067, 800, device="meta"))
    assert tuple(x.shape) == (1, 3, 1088, 800)
    feats = model.backbone(x)
    shapes = {k: tuple(v.shape[-2:]) for k, v in feats.items()}
    assert shapes == {"p2": (272, 200), "p3": (136, 100), "p4": (68, 50), "p5": (34, 25), "p6": (17, 13)}


def test_normalize_subtracts_bgr_mean_and_zero_pads():
    img = torch.full((3, 5, 7), 200.0)
    x = DensePoseRCNN.normalize_and_pad(img)
    assert tuple(x.shape) == (1, 3, 32, 32)
    assert x[0, :, 0, 0].tolist() == pytest.approx([200 - 103.53, 200 - 116.28, 200 - 123.675], abs=1e-4)
    assert float(x[0, :, 5:, :].abs().sum()) == 0.0 and float(x[0, :, :, 7:].abs().sum()) == 0.0


# ---------------------------------------------------------------- mask pasting
def _bilinear_resize(a, out_h, out_w):
    """align_corners=False bilinear resize of a (C, H, W) array, written out in numpy."""
    c, h, w = a.shape

    def axis(n_out, n_in):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.maximum(src, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, ly = axis(out_h, h)
    x0, x1, lx = axis(out_w, w)
    top = a[:, y0][:, :, x0] * (1 - lx) + a[:, y0][:, :, x1] * lx
    bot = a[:, y1][:, :, x0] * (1 - lx) + a[:, y1][:, :, x1] * lx
    return top * (1 - ly)[None, :, None] + bot * ly[None, :, None]


def _constructed_logits():
    rng = np.random.default_rng(3)
    coarse = rng.normal(0, 1, (2, 112, 112)).astype(np.float32)
    coarse[1, :, :40] -= 4.0  # left strip is background
    fine = rng.normal(0, 1, (25, 112, 112)).astype(np.float32)
    fine[0, 80:, :] += 5.0    # bottom strip: fine background wins inside the foreground
    fine[7, :40, 40:] += 6.0
    fine[19, 40:80, 40:] += 6.0
    return coarse, fine


def test_instance_labels_match_independent_resampling():
    coarse, fine = _constructed_logits()
    box = torch.tensor([10.7, 5.2, 50.5, 40.1])
    x, y, labels = instance_labels(torch.from_numpy(coarse), torch.from_numpy(fine), box)
    w, h = int(np.float32(50.5) - np.float32(10.7)), int(np.float32(40.1) - np.float32(5.2))
    assert (x, y, w, h) == (10, 5, 39, 34)  # width 39 = trunc(39.8), not trunc(50.5)-trunc(10.7)=40
    fg = _bilinear_resize(coarse, h, w).argmax(0) > 0
    exp = _bilinear_resize(fine, h, w).argmax(0) * fg
    assert labels.dtype == np.uint8 and labels.shape == (h, w)
    assert (labels == exp).mean() > 0.995  # float ties aside, identical
    assert {0, 7, 19} <= set(np.unique(labels).tolist())


def test_paint_first_instance_only_and_truncated_box():
    coarse, fine = _constructed_logits()
    c2 = torch.from_numpy(np.stack([coarse, coarse]))
    f2 = torch.from_numpy(np.stack([fine, fine]))
    boxes = torch.tensor([[10.7, 5.2, 50.5, 40.1], [60.0, 50.0, 90.0, 70.0]])
    canvas = paint_first_instance((80, 100), boxes, c2, f2)
    assert canvas.shape == (80, 100) and canvas.dtype == np.uint8
    _, _, labels = instance_labels(c2[0], f2[0], boxes[0])
    np.testing.assert_array_equal(canvas[5:5 + 34, 10:10 + 39], labels)
    outside = canvas.copy()
    outside[5:39, 10:49] = 0
    assert outside.max() == 0  # second instance ignored, nothing outside the truncated box
    thin = torch.tensor([[10.2, 5.0, 10.9, 40.0]])  # trunc width 0 -> nothing painted
    assert paint_first_instance((80, 100), thin, c2[:1], f2[:1]).max() == 0
    assert int_box_xywh(thin[0]) == (10, 5, 0, 35)
    empty = paint_first_instance((80, 100), boxes[:0], c2[:0], f2[:0])
    assert empty.shape == (80, 100) and empty.max() == 0


# ---------------------------------------------------------------- RPN and box head on constructed weights
def _rpn_reference(feats, bias, pre_topk, image_hw, nms_thresh=0.7, post_topk=1000):
    """Loop-level proposal selection: logits f[y, x] + bias[a], zero deltas, detectron2's anchor rule."""
    from torchvision.ops import nms
    h_img, w_img = image_hw
    picked = []
    for lvl, (f, size, stride) in enumerate(zip(feats, (32, 64, 128, 256, 512), (4, 8, 16, 32, 64))):
        rows = []
        fh, fw = f.shape
        for y in range(fh):
            for x in range(fw):
                for a, ratio in enumerate((0.5, 1.0, 2.0)):
                    w = math.sqrt(size * size / ratio)
                    h = ratio * w
                    box = [x * stride - w / 2, y * stride - h / 2, x * stride + w / 2, y * stride + h / 2]
                    rows.append((float(f[y, x]) + bias[a], box))
        rows.sort(key=lambda r: -r[0])
        rows = rows[:pre_topk]
        boxes = torch.tensor([[min(max(b[0], 0), w_img), min(max(b[1], 0), h_img),
                               min(max(b[2], 0), w_img), min(max(b[3], 0), h_img)] for _, b in rows],
                             dtype=torch.float32)
        scores = torch.tensor([s for s, _ in rows])
        ok = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
        boxes, scores = boxes[ok], scores[ok]
        keep = nms(boxes, scores, nms_thresh)
        picked += [(float(scores[k]), boxes[k].tolist()) for k in keep]
    picked.sort(key=lambda r: -r[0])
    return picked[:post_topk]


def test_rpn_order_topk_clip_and_per_level_nms():
    from parse_utils.densepose.rpn import RPN
    rng = np.random.default_rng(5)
    sizes = [(20, 16), (10, 8), (5, 4), (3, 2), (2, 1)]
    feats_np = [rng.uniform(0.0, 10.0, s).astype(np.float32) for s in sizes]
    rpn = RPN(channels=2, pre_nms_topk=40, post_nms_topk=30)
    bias = (0.0, 0.37, 0.71)
    with torch.no_grad():
        head = rpn.rpn_head
        for p in head.parameters():
            p.zero_()
        head.conv.weight[0, 0, 1, 1] = 1.0  # t[0] = relu(feature channel 0)
        head.objectness_logits.weight[:, 0, 0, 0] = 1.0
        head.objectness_logits.bias.copy_(torch.tensor(bias))
    feats = {}
    for name, f in zip(("p2", "p3", "p4", "p5", "p6"), feats_np):
        t = torch.zeros(1, 2, *f.shape)
        t[0, 0] = torch.from_numpy(f)
        feats[name] = t
    image_hw = (78, 61)
    with torch.no_grad():
        boxes, scores = rpn(feats, image_hw)
    ref = _rpn_reference(feats_np, bias, 40, image_hw, post_topk=30)
    assert boxes.shape[0] == len(ref) == 30
    np.testing.assert_allclose(scores.numpy(), [s for s, _ in ref], rtol=0, atol=1e-5)
    np.testing.assert_allclose(boxes.numpy(), [b for _, b in ref], rtol=0, atol=1e-4)


def _box_branch(fc_dim, cls_bias, delta_bias):
    from parse_utils.densepose.roi_heads import BoxHead, BoxPredictor
    head, pred = BoxHead(2 * 49, fc_dim), BoxPredictor(fc_dim)
    with torch.no_grad():
        for p in list(head.parameters()) + list(pred.parameters()):
            p.zero_()
        pred.cls_score.bias.copy_(torch.tensor(cls_bias))
        pred.bbox_pred.bias.copy_(torch.tensor(delta_bias))
    return head, pred


def test_box_head_background_last_strict_threshold_and_decoding():
    from parse_utils.densepose.roi_heads import detect_boxes
    feats = {k: torch.zeros(1, 2, 64 // 2 ** i, 64 // 2 ** i) for i, k in enumerate(("p2", "p3", "p4", "p5"))}
    proposals = torch.tensor([[10.0, 20.0, 50.0, 60.0], [200.0, 100.0, 240.0, 250.0]])
    logit = math.log(0.81 / 0.19)  # person probability 0.81 with background in column 1
    # dx = 1.0/10 -> shift 0.1 w; dw = 5 ln2 / 5 -> width doubled
    head, pred = _box_branch(4, [logit, 0.0], [1.0, 0.0, 5 * math.log(2.0), 0.0])
    boxes, scores = detect_boxes(head, pred, feats, proposals, (240, 230))
    assert scores.tolist() == pytest.approx([0.81, 0.81], abs=1e-5)
    w0 = 40.0
    cx = 30.0 + 0.1 * w0
    exp0 = [max(cx - w0, 0.0), 20.0, cx + w0, 60.0]  # x1 = -6 clipped to 0
    w1 = 40.0
    cx1 = 220.0 + 0.1 * w1
    exp1 = [cx1 - w1, 100.0, min(cx1 + w1, 230.0), min(250.0, 240.0)]  # clipped to W=230, H=240
    got = sorted(boxes.tolist())
    np.testing.assert_allclose(got, sorted([exp0, exp1]), atol=1e-4)
    # the same margin the other way round (background column wins) detects nothing
    head, pred = _box_branch(4, [0.0, logit], [0.0, 0.0, 0.0, 0.0])
    assert detect_boxes(head, pred, feats, proposals, (240, 230))[0].shape[0] == 0
    head, pred = _box_branch(4, [math.log(0.79 / 0.21), 0.0], [0.0, 0.0, 0.0, 0.0])
    assert detect_boxes(head, pred, feats, proposals, (240, 230))[0].shape[0] == 0


def test_box_head_nms_and_detection_cap():
    from parse_utils.densepose.roi_heads import detect_boxes
    feats = {k: torch.zeros(1, 2, 256 // 2 ** i, 256 // 2 ** i) for i, k in enumerate(("p2", "p3", "p4", "p5"))}
    grid = [[x * 12.0, y * 12.0, x * 12.0 + 10.0, y * 12.0 + 10.0] for y in range(12) for x in range(12)]
    overlapping = [[0.0, 0.0, 10.0, 10.5]]  # IoU 0.95 with the first grid box
    proposals = torch.tensor(grid + overlapping)
    head, pred = _box_branch(4, [3.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    boxes, scores = detect_boxes(head, pred, feats, proposals, (1000, 1000))
    assert boxes.shape[0] == 100  # 144 separate boxes, capped at DETECTIONS_PER_IMAGE
    head, pred = _box_branch(4, [3.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    boxes, _ = detect_boxes(head, pred, feats, torch.cat([proposals[:2], proposals[-1:]]), (1000, 1000))
    assert boxes.shape[0] == 2  # the overlapping pair is reduced to one by NMS at 0.5
