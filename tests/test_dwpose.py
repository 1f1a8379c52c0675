"""DWPose: detector/pose decoding, OpenPose conversion and drawing against hand-made values
and independent numpy computations, plus end to end on the synthetic ONNX models."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from PIL import Image

import parse_utils
from parse_utils.dwpose import detector as det
from parse_utils.dwpose import openpose as op
from parse_utils.dwpose import pose as ps
from parse_utils.dwpose import render as rd
from parse_utils.dwpose import wholebody as wb
from parse_utils.dwpose.synthetic import write_dwpose_models

BLACK = (0, 0, 0)


# ----------------------------------------------------------------------------- canvas + letterbox
@pytest.mark.parametrize(
    "hw, expected",
    [((1024, 768), (704, 512)), ((512, 544), (512, 512)), ((512, 608), (512, 640)), ((100, 300), (512, 1536)), ((7, 5), (704, 512))],
)
def test_detect_canvas_size(hw, expected):
    assert wb.detect_canvas_size(*hw) == expected


def test_resize_to_detect_canvas_interpolation():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    big = rng.integers(0, 256, size=(1024, 768, 3), dtype=np.uint8)
    np.testing.assert_array_equal(wb.resize_to_detect_canvas(small), cv2.resize(small, (512, 704), interpolation=cv2.INTER_LANCZOS4))
    np.testing.assert_array_equal(wb.resize_to_detect_canvas(big), cv2.resize(big, (512, 704), interpolation=cv2.INTER_AREA))
    exact = rng.integers(0, 256, size=(512, 512, 3), dtype=np.uint8)  # k == 1 -> area, i.e. unchanged
    np.testing.assert_array_equal(wb.resize_to_detect_canvas(exact), exact)


def test_letterbox_top_left_grey_raw_values():
    image = np.full((704, 512, 3), 7, dtype=np.uint8)
    image[..., 1] = 200
    batch, ratio = det.letterbox(image)
    assert batch.shape == (1, 3, 640, 640) and batch.dtype == np.float32
    assert ratio == pytest.approx(640 / 704)
    new_w, new_h = int(512 * 640 / 704), 640
    assert new_w == 465
    expected = np.full((640, 640, 3), 114.0, dtype=np.float32)
    expected[:new_h, :new_w, 0] = 7.0
    expected[:new_h, :new_w, 1] = 200.0
    expected[:new_h, :new_w, 2] = 7.0
    np.testing.assert_array_equal(batch[0], expected.transpose(2, 0, 1))


def test_letterbox_rejects_bad_image():
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        det.letterbox(np.zeros((10, 10), dtype=np.uint8))


# ----------------------------------------------------------------------------- YOLOX decoding + NMS
def _anchor_index(stride: int, gx: int, gy: int) -> int:
    offset = {8: 0, 16: 80 * 80, 32: 80 * 80 + 40 * 40}[stride]
    return offset + gy * (640 // stride) + gx


def test_anchor_grid_order():
    cells, strides = det.anchor_grid()
    assert cells.shape == (8400, 2) and strides.shape == (8400,)
    assert tuple(cells[1]) == (1, 0) and tuple(cells[80]) == (0, 1)  # x fastest
    i = _anchor_index(32, 3, 19)
    assert tuple(cells[i]) == (3, 19) and strides[i] == 32
    assert tuple(cells[6400]) == (0, 0) and strides[6400] == 16


def test_decode_yolox_known_box():
    raw = np.zeros((1, 8400, 85), dtype=np.float32)
    i = _anchor_index(16, 5, 7)
    raw[0, i, :4] = [0.25, 0.5, math.log(4.0), math.log(2.0)]
    raw[0, i, 4] = 0.8
    raw[0, i, 5] = 0.9
    raw[0, i, 7] = 0.5
    ratio = 0.5
    boxes, scores = det.decode_yolox(raw, ratio)
    # cx = 5.25*16 = 84, cy = 7.5*16 = 120, w = 64, h = 32, then divided by r (not clipped)
    np.testing.assert_allclose(boxes[i], np.array([52, 104, 116, 136]) / ratio, rtol=1e-6)
    assert scores.shape == (8400, 80)
    assert scores[i, 0] == pytest.approx(0.72) and scores[i, 2] == pytest.approx(0.4)
    people, person_scores = det.select_people(boxes, scores)
    np.testing.assert_allclose(people, [[104, 208, 232, 272]], rtol=1e-6)
    np.testing.assert_allclose(person_scores, [0.72], rtol=1e-6)


def test_decode_yolox_rejects_wrong_shape():
    with pytest.raises(ValueError, match="8400"):
        det.decode_yolox(np.zeros((1, 100, 85), dtype=np.float32), 1.0)


def _reference_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    kept = []
    for k in order:
        ok = True
        for j in kept:
            iw = max(0.0, min(boxes[k][2], boxes[j][2]) - max(boxes[k][0], boxes[j][0]) + 1)
            ih = max(0.0, min(boxes[k][3], boxes[j][3]) - max(boxes[k][1], boxes[j][1]) + 1)
            area_k = (boxes[k][2] - boxes[k][0] + 1) * (boxes[k][3] - boxes[k][1] + 1)
            area_j = (boxes[j][2] - boxes[j][0] + 1) * (boxes[j][3] - boxes[j][1] + 1)
            if iw * ih / (area_k + area_j - iw * ih) > thr:
                ok = False
                break
        if ok:
            kept.append(k)
    return kept


def test_nms_matches_independent_greedy():
    rng = np.random.default_rng(3)
    for _ in range(5):
        xy = rng.uniform(0, 100, size=(40, 2))
        wh = rng.uniform(5, 60, size=(40, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        scores = rng.permutation(40) / 40.0 + 0.01
        assert list(det.nms(boxes, scores, 0.45)) == _reference_nms(boxes.tolist(), scores.tolist(), 0.45)


def test_nms_uses_plus_one_iou():
    boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], dtype=np.float64)
    # +1 convention: IoU = 77 / 165 = 0.467 > 0.45 -> suppressed (plain IoU would be 0.43 -> kept)
    assert list(det.nms(boxes, np.array([0.9, 0.8]), 0.45)) == [0]
    assert list(det.nms(boxes, np.array([0.9, 0.8]), 0.47)) == [0, 1]
    # IoU exactly at the threshold is kept (only IoU > threshold suppresses)
    half = np.array([[0, 0, 9, 9], [0, 0, 9, 19]], dtype=np.float64)  # 100 / 200
    assert list(det.nms(half, np.array([0.8, 0.9]), 0.5)) == [1, 0]
    assert list(det.nms(half, np.array([0.8, 0.9]), 0.49)) == [1]


def test_select_people_thresholds_and_order():
    boxes = np.array([[0, 0, 50, 100], [200, 0, 250, 100], [2, 0, 52, 100], [400, 0, 450, 100], [600, 0, 650, 100]], dtype=np.float32)
    scores = np.zeros((5, 80), dtype=np.float32)
    scores[:, 0] = [0.5, 0.9, 0.6, 0.29, 0.0]
    scores[4, 3] = 0.99  # another class never yields a person
    out, person = det.select_people(boxes, scores)
    np.testing.assert_array_equal(out, boxes[[1, 2]])  # box 0 suppressed by box 2, box 3 below 0.3
    np.testing.assert_allclose(person, [0.9, 0.6])
    empty, empty_scores = det.select_people(boxes, np.zeros((5, 80), dtype=np.float32))
    assert empty.shape == (0, 4) and empty_scores.shape == (0,)


# ----------------------------------------------------------------------------- pose crop + SimCC
def test_fix_aspect_ratio():
    np.testing.assert_allclose(ps.fix_aspect_ratio(np.array([300.0, 100.0]), 0.75), [300, 400])
    np.testing.assert_allclose(ps.fix_aspect_ratio(np.array([30.0, 100.0]), 0.75), [75, 100])


def test_crop_matrix_is_closed_form():
    center = np.array([200.5, 310.25], dtype=np.float32)
    scale = np.array([150.0, 200.0], dtype=np.float32)
    f = 288 / 150.0
    expected = np.array([[f, 0, 144 - f * 200.5], [0, f, 192 - f * 310.25]])
    np.testing.assert_allclose(ps.crop_matrix(center, scale), expected, atol=1e-3)


def test_crop_person_geometry_and_normalisation():
    image = np.zeros((400, 300, 3), dtype=np.uint8)
    image[150:170, 100:120] = (255, 128, 0)
    box = (50, 100, 170, 220)  # centre (110, 160), scale (150, 150) -> fixed (150, 200)
    batch, center, scale = ps.crop_person(image, box)
    assert batch.shape == (1, 3, 384, 288) and batch.dtype == np.float32
    np.testing.assert_allclose(center, [110, 160])
    np.testing.assert_allclose(scale, [150, 200])
    f = 288 / 150
    # image pixel centre (109.5, 159.5) of the patch lands at crop 144 + f*(x - 110)
    cx, cy = 144 + f * (109.5 - 110), 192 + f * (159.5 - 160)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(batch[0, :, int(cy), int(cx)], (np.array([255, 128, 0]) - mean) / std, rtol=1e-5)
    np.testing.assert_allclose(batch[0, :, 2, 2], -mean / std, rtol=1e-5)  # black border / background
    # crop_to_image inverts the crop mapping
    back = ps.crop_to_image(np.array([[cx, cy]]), center, scale)
    np.testing.assert_allclose(back, [[109.5, 159.5]], atol=1e-3)


def test_decode_simcc():
    sx = np.zeros((1, 5, 576), dtype=np.float32)
    sy = np.zeros((1, 5, 768), dtype=np.float32)
    sy[0, 4, 9] = 0.4                            # x row all zero: score exactly 0 -> bin -1
    sx[0, 0, 100], sy[0, 0, 50] = 0.8, 0.5      # plain
    sx[0, 1, [7, 9]], sy[0, 1, 3] = 0.6, 0.7     # tie -> first index
    sx[0, 2] = -1.0                              # score <= 0 -> bin -1
    sx[0, 2, 10], sy[0, 2, 20] = -0.5, 3.0
    sx[0, 3, 575], sy[0, 3, 767] = 1.7, 2.5      # raw, may exceed 1
    locs, scores = ps.decode_simcc(sx, sy)
    np.testing.assert_array_equal(locs, [[50, 25], [3.5, 1.5], [-0.5, -0.5], [287.5, 383.5], [-0.5, -0.5]])
    np.testing.assert_allclose(scores, [0.5, 0.6, -0.5, 1.7, 0.0])


# ----------------------------------------------------------------------------- OpenPose conversion
def test_coco_wholebody_to_openpose():
    kp = np.stack([np.arange(133.0), 1000 + np.arange(133.0)], axis=1)[None]
    sc = np.linspace(0.0, 1.0, 133)[None].copy()
    sc[0, 5], sc[0, 6] = 0.9, 0.31
    pts, scs = op.coco_wholebody_to_openpose(kp, sc)
    assert pts.shape == (1, 134, 2) and scs.shape == (1, 134)
    source = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    for slot, src in enumerate(source):
        if src is None:
            np.testing.assert_allclose(pts[0, 1], [5.5, 1005.5])
            assert scs[0, 1] == 1.0
        else:
            np.testing.assert_allclose(pts[0, slot], kp[0, src])
            assert scs[0, slot] == sc[0, src]
    np.testing.assert_allclose(pts[0, 18:], kp[0, 17:])  # feet, face, hands keep COCO order
    sc[0, 6] = 0.3  # strict > 0.3
    assert op.coco_wholebody_to_openpose(kp, sc)[1][0, 1] == 0.0


def test_build_pose_result_layout():
    count = 2
    pts = np.random.default_rng(0).uniform(0, 100, size=(count, 134, 2))
    scs = np.full((count, 134), 0.9)
    scs[1, 4] = 0.3
    res = op.build_pose_result(pts, scs, 200, 100)
    assert res.bodies.shape == (36, 2) and res.faces.shape == (2, 68, 2) and res.hands.shape == (4, 21, 2)
    np.testing.assert_allclose(res.bodies[18 + 3], pts[1, 3] / [200, 100])
    assert res.body_scores[1, 3] == 21 and res.body_scores[1, 4] == -1
    np.testing.assert_allclose(res.hands[1], pts[1, 92:113] / [200, 100])   # left hands first
    np.testing.assert_allclose(res.hands[2], pts[0, 113:134] / [200, 100])  # then right hands
    np.testing.assert_allclose(res.faces[0], pts[0, 24:92] / [200, 100])


# ----------------------------------------------------------------------------- rendering
W, H = 200, 160


def _pose(body_px: dict, face_px=(), hands_px=()):
    """One person from pixel positions; unspecified body points are invisible."""
    bodies = np.zeros((18, 2))
    scores = np.full((1, 18), -1.0)
    for j, (x, y) in body_px.items():
        bodies[j] = (x / W, y / H)
        scores[0, j] = j
    faces = np.zeros((1, 68, 2))
    for k, (x, y) in enumerate(face_px):
        faces[0, k] = (x / W, y / H)
    hands = np.zeros((2, 21, 2))
    for h, hand in enumerate(hands_px):
        for k, xy in hand.items():
            hands[h, k] = (xy[0] / W, xy[1] / H)
    return op.PoseResult(bodies, scores, faces, np.ones((1, 68)), hands, np.ones((2, 21)))


SPEC_DIMMED = {255: 153, 170: 102, 85: 51, 0: 0}
SPEC_HAND_EDGE_RGB = [
    (255, 0, 0), (255, 77, 0), (255, 153, 0), (255, 229, 0), (204, 255, 0), (128, 255, 0), (51, 255, 0),
    (0, 255, 25), (0, 255, 102), (0, 255, 179), (0, 255, 255), (0, 178, 255), (0, 102, 255), (0, 25, 255),
    (51, 0, 255), (128, 0, 255), (204, 0, 255), (255, 0, 230), (255, 0, 153), (255, 0, 77),
]
SPEC_BODY_RGB = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0), (0, 255, 85),
    (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
    (255, 0, 255), (255, 0, 170), (255, 0, 85),
]
SPEC_LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
              (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]


def test_limb_and_joint_pixels():
    canvas = rd.render_openpose(_pose({1: (50, 50), 2: (130, 50)}), W, H)
    assert canvas.shape == (H, W, 3) and canvas.dtype == np.uint8
    assert tuple(canvas[50, 90]) == (153, 0, 0)       # limb 0, dimmed
    assert tuple(canvas[53, 90]) == (153, 0, 0)       # within the half width 4
    assert tuple(canvas[56, 90]) == BLACK
    assert tuple(canvas[50, 50]) == (255, 85, 0)      # joint 1, undimmed
    assert tuple(canvas[54, 50]) == (255, 85, 0)      # radius 4
    assert tuple(canvas[50, 130]) == (255, 170, 0)    # joint 2
    assert tuple(canvas[50, 136]) == BLACK            # ellipse half length 40 ends at x = 130
    colours = {tuple(c) for c in canvas.reshape(-1, 3)}
    assert colours == {BLACK, (153, 0, 0), (255, 85, 0), (255, 170, 0)}


@pytest.mark.parametrize("limb", range(17))
def test_every_limb_colour(limb):
    a, b = SPEC_LIMBS[limb]
    canvas = rd.render_openpose(_pose({a: (40, 80), b: (160, 80)}), W, H)
    assert tuple(canvas[80, 100]) == tuple(SPEC_DIMMED[c] for c in SPEC_BODY_RGB[limb])
    assert tuple(canvas[80, 40]) == SPEC_BODY_RGB[a] and tuple(canvas[80, 160]) == SPEC_BODY_RGB[b]


def test_ear_shoulder_pairs_are_not_drawn():
    canvas = rd.render_openpose(_pose({2: (40, 80), 16: (160, 80)}), W, H)
    assert tuple(canvas[80, 100]) == BLACK
    assert tuple(canvas[80, 160]) == (255, 0, 170)


def test_invisible_end_skips_limb():
    pose = _pose({1: (40, 80), 2: (160, 80)})
    pose.body_scores[0, 2] = -1
    canvas = rd.render_openpose(pose, W, H)
    assert tuple(canvas[80, 100]) == BLACK and tuple(canvas[80, 160]) == BLACK
    assert tuple(canvas[80, 40]) == (255, 85, 0)


def test_face_points_unchecked_but_need_one_pixel():
    pose = _pose({0: (30, 120)}, face_px=[(100, 100), (0.9, 50), (60, 0.5), (30, 120)])
    pose.faces_scores[:] = 0.0  # scores are never looked at
    canvas = rd.render_openpose(pose, W, H)
    assert tuple(canvas[100, 100]) == (255, 255, 255) and tuple(canvas[103, 100]) == (255, 255, 255)
    assert tuple(canvas[105, 100]) == BLACK
    assert tuple(canvas[50, 0]) == BLACK and tuple(canvas[0, 60]) == BLACK  # truncated to 0 -> skipped
    assert tuple(canvas[120, 30]) == (255, 255, 255)  # face drawn after (over) the body joint
    assert tuple(canvas[120, 34]) == (255, 0, 0)      # joint 0 shows outside the face dot


@pytest.mark.parametrize("edge", range(20))
def test_hand_edge_colours(edge):
    p, q = rd.HAND_EDGES[edge]
    canvas = rd.render_openpose(_pose({}, hands_px=[{p: (40, 80), q: (160, 80)}]), W, H)
    assert tuple(canvas[80, 100]) == SPEC_HAND_EDGE_RGB[edge]
    assert tuple(canvas[81, 100]) == SPEC_HAND_EDGE_RGB[edge]  # thickness 2
    assert tuple(canvas[80, 40]) == (0, 0, 255) and tuple(canvas[84, 40]) == (0, 0, 255)
    assert tuple(canvas[80, 160]) == (0, 0, 255)


def test_hands_drawn_last_and_need_all_coordinates():
    # left hand: wrist over a face point; right hand: edge to a point with x < 1 is skipped
    pose = _pose({}, face_px=[(100, 40)], hands_px=[{0: (100, 40), 1: (100, 120)}, {0: (150, 60), 1: (0.5, 60)}])
    canvas = rd.render_openpose(pose, W, H)
    assert tuple(canvas[40, 100]) == (0, 0, 255)
    assert tuple(canvas[80, 100]) == (255, 0, 0)
    assert tuple(canvas[60, 150]) == (0, 0, 255)
    assert tuple(canvas[60, 75]) == BLACK and tuple(canvas[60, 20]) == BLACK


def test_people_interleave_limb_major():
    bodies = np.zeros((36, 2))
    scores = np.full((2, 18), -1.0)
    # person 0 limb 1 (1-5) and person 1 limb 0 (1-2) cross at (100, 80): limb 1 is drawn later
    bodies[1], bodies[5] = (40 / W, 80 / H), (160 / W, 80 / H)
    bodies[18 + 1], bodies[18 + 2] = (100 / W, 20 / H), (100 / W, 140 / H)
    scores[0, [1, 5]] = [1, 5]
    scores[1, [1, 2]] = [19, 20]
    pose = op.PoseResult(bodies, scores, np.zeros((0, 68, 2)), np.zeros((0, 68)), np.zeros((0, 21, 2)), np.zeros((0, 21)))
    canvas = rd.render_openpose(pose, W, H)
    assert tuple(canvas[80, 100]) == (153, 51, 0)
    assert tuple(canvas[110, 100]) == (153, 0, 0)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_dwpose_models(tmp_path_factory.mktemp("Human-Toolkit") / "DWPose", seed=0)


@pytest.fixture(scope="module")
def detector(model_dir):
    return parse_utils.DWposeDetector(model_dir, device="cpu")


def _person_image(w=768, h=1024, shift=0):
    img = np.full((h, w, 3), 40, dtype=np.uint8)
    img[h // 5: h * 9 // 10, w // 3 + shift: w * 2 // 3 + shift] = (220, 180, 150)
    return Image.fromarray(img)


def test_synthetic_models_shapes_and_size(model_dir):
    import onnxruntime as ort

    for name, ins, outs in [
        ("yolox_l.onnx", [[1, 3, 640, 640]], [[1, 8400, 85]]),
        ("dw-ll_ucoco_384.onnx", [[1, 3, 384, 288]], [[1, 133, 576], [1, 133, 768]]),
    ]:
        path = model_dir / name
        assert path.stat().st_size < 100_000
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.shape for i in sess.get_inputs()] == ins
        assert [o.shape for o in sess.get_outputs()] == outs


def test_synthetic_models_seeded(tmp_path):
    a = write_dwpose_models(tmp_path / "a", seed=0)
    b = write_dwpose_models(tmp_path / "b", seed=0)
    c = write_dwpose_models(tmp_path / "c", seed=1)
    for name in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()


def test_end_to_end_one_person_inside_box(detector):
    image = _person_image()
    canvas = wb.resize_to_detect_canvas(np.asarray(image))
    boxes, scores = detector.detector(canvas)
    assert boxes.shape == (1, 4) and scores[0] == pytest.approx(0.9 * 0.95, rel=1e-5)
    # box is centred on the bright figure (centre of the 768 x 1024 figure scaled to 512 x 704)
    assert (boxes[0, 0] + boxes[0, 2]) / 2 == pytest.approx(256, abs=4)
    assert (boxes[0, 1] + boxes[0, 3]) / 2 == pytest.approx(0.55 * 704, abs=6)
    keypoints, kp_scores = detector.pose(canvas, boxes)
    assert keypoints.shape == (1, 133, 2) and np.all(kp_scores > 0.3)
    x1, y1, x2, y2 = boxes[0]
    assert np.all((keypoints[0, :, 0] > x1) & (keypoints[0, :, 0] < x2))
    assert np.all((keypoints[0, :, 1] > y1) & (keypoints[0, :, 1] < y2))
    pose, (h, w) = detector.estimate(image)
    assert (h, w) == (704, 512) and pose.bodies.shape == (18, 2)
    assert np.all(pose.body_scores[0] >= 0)


def test_end_to_end_output_and_determinism(detector, model_dir):
    image = _person_image()
    out = detector(image)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (768, 1024)
    arr = np.asarray(out)
    lit = arr.max(axis=2) > 0
    assert 2000 < lit.sum() < 0.2 * lit.size
    assert (arr == (255, 255, 255)).all(axis=2).any()  # face dots
    assert (arr == (0, 0, 255)).all(axis=2).any()      # hand points
    again = parse_utils.DWposeDetector(str(model_dir))(image, output_type="np")
    np.testing.assert_array_equal(arr, again)
    moved = np.asarray(detector(_person_image(shift=120)))
    assert not np.array_equal(arr, moved)


def test_end_to_end_bilinear_resize_of_rendering(detector):
    image = _person_image(w=300, h=257)
    out = detector(image, output_type="np")
    assert out.shape == (257, 300, 3) and out.dtype == np.uint8
    pose, (h, w) = detector.estimate(image)
    assert (h, w) == (512, 576)
    drawing = rd.render_openpose(pose, w, h)
    np.testing.assert_array_equal(out, cv2.resize(drawing, (300, 257), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(out, cv2.resize(drawing, (300, 257), interpolation=cv2.INTER_LANCZOS4))


def test_end_to_end_input_modes(detector):
    rgb = _person_image(w=240, h=320)
    rgba = rgb.convert("RGBA")
    np.testing.assert_array_equal(np.asarray(detector(rgba)), np.asarray(detector(rgb)))
    np.testing.assert_array_equal(detector(np.asarray(rgb), output_type="np"), np.asarray(detector(rgb)))
    assert detector(rgb.convert("L")).size == (240, 320)
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        detector(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="output_type"):
        detector(rgb, output_type="cv2")
    with pytest.raises(TypeError, match="PIL image"):
        detector("person.jpg")


def test_no_box_uses_whole_canvas(detector):
    canvas = wb.resize_to_detect_canvas(np.asarray(_person_image(w=384, h=512)))
    h, w = canvas.shape[:2]
    empty = detector.pose(canvas, np.zeros((0, 4), dtype=np.float32))
    whole = detector.pose(canvas, np.array([[0, 0, w, h]], dtype=np.float32))
    np.testing.assert_array_equal(empty[0], whole[0])
    assert empty[0].shape == (1, 133, 2)


def test_missing_files(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        parse_utils.DWposeDetector(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="yolox_l.onnx"):
        parse_utils.DWposeDetector(tmp_path)
    (tmp_path / "yolox_l.onnx").write_bytes((model_dir / "yolox_l.onnx").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"dw-ll_ucoco_384\.onnx"):
        parse_utils.DWposeDetector(tmp_path)


def test_device_selection_falls_back_to_cpu():
    import onnxruntime as ort

    assert wb._providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert wb._providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    else:
        assert wb._providers("cuda:1") == ["CPUExecutionProvider"]


@pytest.mark.parametrize("device", ["cuda:x", "gpu", "cpu:0", "mps"])
def test_bad_device_string(model_dir, device):
    with pytest.raises(ValueError, match="cuda:N"):
        parse_utils.DWposeDetector(model_dir, device=device)


def test_session_options_leave_cores_and_do_not_spin(monkeypatch):
    from parse_utils.dwpose.wholebody import session_options

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    options = session_options()
    assert options.intra_op_num_threads == 14
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(3).intra_op_num_threads == 3
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert session_options().intra_op_num_threads == 2
