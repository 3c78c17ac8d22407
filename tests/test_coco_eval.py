"""Tests for mrcnn_jax.coco_eval: result conversion, COCOeval wrapper, metrics.json."""

import copy
import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_util

from mrcnn_jax import coco_eval

# pycocotools' mask.decode (used here only to check masks) trips a numpy 2 deprecation.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 160, 200
# Non-contiguous COCO ids <-> contiguous labels 1..3.
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]
LABEL_TO_CAT = {1: 1, 2: 3, 3: 7}
CAT_TO_LABEL = {v: k for k, v in LABEL_TO_CAT.items()}
KEYS = [f"{t}/{n}" for t in ("bbox", "segm") for n in ("AP", "AP50", "AP75", "APs", "APm", "APl")]


def _rect_polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _rle_of_rect(x, y, w, h):
    m = np.zeros((H, W), np.uint8)
    m[y : y + h, x : x + w] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def make_gt(with_large=True):
    """3 images; small (< 32^2), medium and (optionally) large objects; polygon + RLE masks."""
    # (image_id, category_id, x, y, w, h, mask kind)
    objs = [
        (1, 1, 10, 10, 20, 20, "poly"),  # small, 400
        (1, 3, 60, 40, 50, 40, "rle"),  # medium, 2000
        (2, 7, 20, 30, 40, 60, "poly"),  # medium, 2400
        (2, 1, 150, 100, 24, 30, "rle"),  # small, 720
        (3, 3, 5, 5, 30, 28, "poly"),  # small, 840
    ]
    if with_large:
        objs.append((3, 7, 60, 20, 120, 110, "rle"))  # large, 13200
    anns = []
    for ann_id, (img, cat, x, y, w, h, kind) in enumerate(objs, start=1):
        seg = _rect_polygon(x, y, w, h) if kind == "poly" else _rle_of_rect(x, y, w, h)
        anns.append(
            {
                "id": ann_id,
                "image_id": img,
                "category_id": cat,
                "bbox": [float(x), float(y), float(w), float(h)],
                "area": float(w * h),
                "iscrowd": 0,
                "segmentation": seg,
            }
        )
    return {
        "images": [{"id": i, "height": H, "width": W, "file_name": f"{i}.jpg"} for i in (1, 2, 3)],
        "annotations": anns,
        "categories": copy.deepcopy(CATEGORIES),
    }


def _gt_mask(gt, ann):
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_util.merge(mask_util.frPyObjects(seg, H, W))
    else:
        rle = seg
    return mask_util.decode(rle).astype(bool)


def gt_as_detections(gt, shift=0, score=0.9):
    """Ground truth turned into model-style outputs (xyxy, contiguous labels), through detections_to_coco."""
    results = []
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
        boxes = boxes + shift
        masks = np.stack([np.roll(_gt_mask(gt, a), (shift, shift), axis=(0, 1)) for a in anns])
        labels = np.array([CAT_TO_LABEL[a["category_id"]] for a in anns])
        scores = np.full(len(anns), score)
        results += coco_eval.detections_to_coco(img["id"], boxes, scores, labels, masks, LABEL_TO_CAT)
    return results


# ----------------------------------------------------------------------------
# detections_to_coco
# ----------------------------------------------------------------------------


def test_detections_to_coco_round_trip():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 12, 17)) > 0.5
    boxes = np.array([[1.5, 2.0, 10.0, 8.25], [0, 0, 17, 12], [3, 4, 5, 6]], np.float32)
    scores = np.array([0.9, 0.5, 0.1], np.float32)
    labels = np.array([1, 2, 3])
    res = coco_eval.detections_to_coco(42, boxes, scores, labels, masks, LABEL_TO_CAT)

    assert len(res) == 3
    assert [r["category_id"] for r in res] == [1, 3, 7]
    assert res[0]["bbox"] == [1.5, 2.0, 8.5, 6.25]  # x, y, w = x2 - x1, h = y2 - y1
    assert res[1]["bbox"] == [0.0, 0.0, 17.0, 12.0]
    for r, m, s in zip(res, masks, scores):
        assert r["image_id"] == 42
        assert r["score"] == pytest.approx(float(s))
        assert isinstance(r["segmentation"]["counts"], str)
        assert r["segmentation"]["size"] == [12, 17]
        np.testing.assert_array_equal(mask_util.decode(r["segmentation"]).astype(bool), m)
    # Plain Python types only: survives JSON, and decodes after it.
    back = json.loads(json.dumps(res))
    np.testing.assert_array_equal(mask_util.decode(back[2]["segmentation"]).astype(bool), masks[2])


def test_detections_to_coco_identity_no_masks_and_empty():
    res = coco_eval.detections_to_coco(1, np.array([[0, 0, 2, 3]]), np.array([0.7]), np.array([5]))
    assert res == [{"image_id": 1, "category_id": 5, "bbox": [0.0, 0.0, 2.0, 3.0], "score": pytest.approx(0.7)}]
    assert coco_eval.detections_to_coco(1, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), np.zeros((0, 5, 5), bool)) == []


def test_detections_to_coco_validates():
    b, s, l = np.zeros((2, 4)), np.zeros(2), np.ones(2, int)
    with pytest.raises(ValueError, match=r"boxes_xyxy.*\[N, 4\]"):
        coco_eval.detections_to_coco(1, np.zeros((2, 5)), s, l)
    with pytest.raises(ValueError, match="scores"):
        coco_eval.detections_to_coco(1, b, np.zeros(3), l)
    with pytest.raises(ValueError, match="labels"):
        coco_eval.detections_to_coco(1, b, s, np.ones((2, 1), int))
    with pytest.raises(ValueError, match="masks"):
        coco_eval.detections_to_coco(1, b, s, l, np.zeros((3, 4, 4), bool))
    with pytest.raises(ValueError, match="label 4"):
        coco_eval.detections_to_coco(1, b, s, np.array([1, 4]), None, LABEL_TO_CAT)


# ----------------------------------------------------------------------------
# evaluate_coco
# ----------------------------------------------------------------------------


def test_ground_truth_as_predictions_gives_100():
    gt = make_gt()
    results = gt_as_detections(gt)
    original = copy.deepcopy(results)
    printed = []
    metrics = coco_eval.evaluate_coco(gt, results, print_fn=printed.append)
    assert sorted(metrics) == sorted(KEYS)
    for k in KEYS:
        assert metrics[k] == pytest.approx(100.0), k
    assert results == original  # loadRes mutates its input; we must not
    text = "\n".join(printed)
    assert "Average Precision" in text and "bbox" in text and "segm" in text


def test_poor_predictions_score_lower_and_missing_size_range_is_nan():
    gt = make_gt(with_large=False)
    good = coco_eval.evaluate_coco(gt, gt_as_detections(gt), print_fn=None)
    assert math.isnan(good["bbox/APl"]) and math.isnan(good["segm/APl"])  # no large GT
    assert good["bbox/AP"] == pytest.approx(100.0)

    poor = coco_eval.evaluate_coco(gt, gt_as_detections(gt, shift=6), print_fn=None)
    for t in ("bbox", "segm"):
        assert 0.0 <= poor[f"{t}/AP"] < 90.0
        assert poor[f"{t}/AP75"] < poor[f"{t}/AP50"] + 1e-9
        assert math.isnan(poor[f"{t}/APl"])


def test_per_category():
    gt = make_gt()
    results = [r for r in gt_as_detections(gt) if r["category_id"] != 3]  # miss every car
    metrics = coco_eval.evaluate_coco(gt, results, iou_types=("bbox",), print_fn=None, per_category=True)
    assert metrics["bbox/AP-person"] == pytest.approx(100.0)
    assert metrics["bbox/AP-train"] == pytest.approx(100.0)
    assert metrics["bbox/AP-car"] == pytest.approx(0.0)
    assert "segm/AP" not in metrics


def test_empty_results_give_zeros(tmp_path):
    printed = []
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(make_gt()))
    metrics = coco_eval.evaluate_coco(str(gt_path), [], print_fn=printed.append)
    assert metrics == {k: 0.0 for k in KEYS}
    assert any("no detections" in p for p in printed)


def test_segm_uses_mask_area_not_box_area():
    # Thin diagonal masks: box 100x100 (> 96^2, "large") but mask area 100 ("small").
    # A higher-scoring false positive of that shape sits on image 2. With the mask
    # area (what we want) it is a small detection and halves APs; with the box
    # area pycocotools would put it in "large", ignore it for APs, and report 100.
    gt = make_gt(with_large=False)
    m = np.zeros((H, W), bool)
    m[np.arange(20, 120), np.arange(50, 150)] = True
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    gt["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [50.0, 20.0, 100.0, 100.0], "area": 100.0, "iscrowd": 0, "segmentation": rle}
    ]
    box, label = np.array([[50, 20, 150, 120]]), np.array([1])
    res = coco_eval.detections_to_coco(1, box, np.array([0.9]), label, m[None])
    res += coco_eval.detections_to_coco(2, box, np.array([0.95]), label, m[None])
    metrics = coco_eval.evaluate_coco(gt, res, iou_types=("segm",), print_fn=None)
    assert metrics["segm/AP"] == pytest.approx(50.0)
    assert metrics["segm/APs"] == pytest.approx(50.0)
    assert math.isnan(metrics["segm/APl"])


def test_evaluate_errors(tmp_path):
    gt = make_gt()
    results = gt_as_detections(gt)
    with pytest.raises(ValueError, match="category_id"):
        bad = [dict(results[0], category_id=2)]
        coco_eval.evaluate_coco(gt, bad, print_fn=None)
    with pytest.raises(ValueError, match="image_id"):
        coco_eval.evaluate_coco(gt, [dict(results[0], image_id=99)], print_fn=None)
    with pytest.raises(ValueError, match="segmentation"):
        no_masks = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        coco_eval.evaluate_coco(gt, no_masks, print_fn=None)
    # Box-only results are fine for bbox alone.
    no_masks = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    assert coco_eval.evaluate_coco(gt, no_masks, iou_types=("bbox",), print_fn=None)["bbox/AP"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="original image size"):
        small = coco_eval.detections_to_coco(1, np.array([[0, 0, 4, 4]]), np.array([1.0]), np.array([1]), np.ones((1, 8, 8), bool))
        coco_eval.evaluate_coco(gt, small, iou_types=("segm",), print_fn=None)
    with pytest.raises(ValueError, match="unsupported iou type 'boundary'"):
        coco_eval.evaluate_coco(gt, results, iou_types=("boundary",), print_fn=None)
    bad_gt = make_gt()
    bad_gt["annotations"][0]["id"] = 0
    with pytest.raises(ValueError, match="positive"):
        coco_eval.evaluate_coco(bad_gt, results, print_fn=None)
    bad_gt = make_gt()
    del bad_gt["annotations"][2]["iscrowd"]
    with pytest.raises(ValueError, match=r"annotations\[2\].*iscrowd"):
        coco_eval.evaluate_coco(bad_gt, results, print_fn=None)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        coco_eval.evaluate_coco(str(tmp_path / "missing.json"), results, print_fn=None)


# ----------------------------------------------------------------------------
# write_metrics_json
# ----------------------------------------------------------------------------


def test_write_metrics_json(tmp_path):
    gt = make_gt(with_large=False)
    metrics = coco_eval.evaluate_coco(gt, gt_as_detections(gt), print_fn=None)
    path = tmp_path / "sub" / "metrics.json"
    coco_eval.write_metrics_json(path, np.int64(1234), metrics)

    text = path.read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert data["step"] == 1234
    assert len(data) == 13 and set(data) == {"step", *KEYS}
    assert data["bbox/APl"] is None and data["segm/APl"] is None  # NaN -> null
    assert data["bbox/AP"] == pytest.approx(100.0)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left

    coco_eval.write_metrics_json(path, 2000, {"bbox/AP": np.float32(12.5)})  # overwrite
    assert json.loads(path.read_text()) == {"step": 2000, "bbox/AP": 12.5}
    with pytest.raises(ValueError, match="step"):
        coco_eval.write_metrics_json(path, 1, {"step": 3})
    with pytest.raises(TypeError, match="bbox/AP"):
        coco_eval.write_metrics_json(path, 1, {"bbox/AP": "high"})
