"""COCO-style evaluation: detections -> COCO results, pycocotools COCOeval, metrics.json.

numpy + pycocotools only (no JAX, no TensorFlow), so it runs anywhere.

Shape shorthand: N detections in one image, H x W the *original* image size
(the size recorded in the ground-truth json, not the resized/padded network
input), K contiguous foreground classes labelled 1..K (0 is background).

Boxes entering this module are ``xyxy`` in original-image pixels; COCO results
carry ``bbox`` as ``[x, y, w, h]`` with ``w = x2 - x1`` and ``h = y2 - y1``
(the Detectron2 / torchvision convention, no +1).

Numbers follow Detectron2: the six ``stats[:6]`` of ``COCOeval.summarize``
(AP, AP50, AP75, APs, APm, APl) multiplied by 100; for ``keypoints`` (OKS,
no small range) the five ``stats[:5]`` (AP, AP50, AP75, APm, APl), with
per-keypoint OKS sigmas given by the caller or pycocotools' 17 COCO ones. Two details matter for
matching it:

* For ``segm`` the ``bbox`` field is removed from the results before
  ``loadRes``; otherwise pycocotools takes the instance area from the box
  instead of the mask and the small/medium/large split changes.
* pycocotools reports ``-1`` for a size range that holds no ground truth.
  :func:`evaluate_coco` returns ``float('nan')`` there (so a mean over runs or
  a plot does not silently include -100), and :func:`write_metrics_json`
  writes NaN as JSON ``null`` so the file stays strict, valid JSON.

When there are no detections at all for an IoU type, pycocotools' ``loadRes``
crashes; :func:`evaluate_coco` returns ``0.0`` for all six numbers of that
type instead and prints that it did so.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = [
    "METRIC_NAMES",
    "detections_to_coco",
    "evaluate_coco",
    "load_coco_gt",
    "per_category_ap",
    "write_metrics_json",
]

# Order of COCOeval.stats[:6] (bbox, segm) and stats[:5] (keypoints).
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
KEYPOINT_METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl")
_IOU_TYPES = ("bbox", "segm", "keypoints")


def metric_names(iou_type: str) -> tuple[str, ...]:
    return KEYPOINT_METRIC_NAMES if iou_type == "keypoints" else METRIC_NAMES


# ----------------------------------------------------------------------------
# Detections -> COCO results
# ----------------------------------------------------------------------------


def check_detections(boxes_xyxy, scores, labels):
    """Validates one image's detections: boxes [N, 4], scores [N], integer
    labels [N]. Returns them as float64, float64, int64 arrays."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes_xyxy must have shape [N, 4], got {boxes.shape}")
    n = boxes.shape[0]
    if scores.shape != (n,):
        raise ValueError(
            f"scores must have shape [N] = [{n}] to match boxes_xyxy, got {scores.shape}"
        )
    if labels.shape != (n,):
        raise ValueError(
            f"labels must have shape [N] = [{n}] to match boxes_xyxy, got {labels.shape}"
        )
    if n and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    return boxes, scores, labels.astype(np.int64)


def detections_to_coco(
    image_id: int,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray | None = None,
    label_to_category_id: Mapping[int, int] | None = None,
    keypoints: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Converts one image's detections to COCO result dicts.

    Args:
      image_id: the COCO ``images[].id`` of this image.
      boxes_xyxy: ``[N, 4]`` boxes, ``xyxy`` in original-image pixels.
      scores: ``[N]`` confidences.
      labels: ``[N]`` contiguous class labels in ``1..K``.
      masks: ``[N, H, W]`` full-size binary masks (bool or integer, nonzero =
        foreground; a float array is thresholded at 0.5) at the original image
        size, or None for box-only results.
      label_to_category_id: maps contiguous labels to COCO ``category_id``
        (e.g. ``{1: 1, 2: 3, 3: 7}``); None means the identity.
      keypoints: ``[N, K, 3]`` (x, y, v) in original-image pixels, or None;
        written as COCO's flat ``keypoints`` list.

    Returns:
      A list of N dicts with ``image_id`` (int), ``category_id`` (int),
      ``bbox`` (``[x, y, w, h]`` Python floats), ``score`` (float) and, when
      ``masks`` is given, ``segmentation``: compressed RLE
      ``{"size": [H, W], "counts": str}`` (counts decoded to ``str`` so the
      list can be written with ``json.dump``). Only plain Python types, so it
      is JSON-serialisable as is.

    Raises:
      ValueError: on shape mismatches or a label missing from
        ``label_to_category_id``.
    """
    boxes, scores, labels = check_detections(boxes_xyxy, scores, labels)
    n = boxes.shape[0]
    if keypoints is not None:
        keypoints = np.asarray(keypoints, np.float64)
        if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 3:
            raise ValueError(f"keypoints must have shape [N, K, 3] with N = {n}, got "
                             f"{keypoints.shape}")

    rles = None
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[0] != n:
            raise ValueError(
                f"masks must have shape [N, H, W] with N = {n} (full-size masks at "
                f"the original image size), got {masks.shape}"
            )
        if np.issubdtype(masks.dtype, np.floating):
            binary = masks >= 0.5
        else:
            binary = masks != 0
        if n:
            # encode() wants [H, W, N] uint8 in Fortran order.
            rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
            for rle in rles:
                rle["counts"] = rle["counts"].decode("ascii")

    results = []
    for i in range(n):
        label = int(labels[i])
        if label_to_category_id is None:
            category_id = label
        else:
            try:
                category_id = int(label_to_category_id[label])
            except KeyError:
                raise ValueError(
                    f"label {label} (detection {i} of image {image_id}) is not in "
                    f"label_to_category_id (keys: {sorted(label_to_category_id)})"
                ) from None
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        result = {
            "image_id": int(image_id),
            "category_id": category_id,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(scores[i]),
        }
        if keypoints is not None:
            result["keypoints"] = [float(v) for v in keypoints[i].reshape(-1)]
        if rles is not None:
            result["segmentation"] = {
                "size": [int(s) for s in rles[i]["size"]],
                "counts": rles[i]["counts"],
            }
        results.append(result)
    return results


# ----------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------


def _quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, str]:
    """Calls fn with stdout captured (pycocotools prints); returns (result, text)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args, **kwargs)
    return out, buf.getvalue()


def load_coco_gt(gt: Mapping[str, Any] | str | os.PathLike | COCO) -> COCO:
    """Returns a pycocotools ``COCO`` for a gt dict, a json path, or a ``COCO``.

    Checks what COCOeval relies on but does not check itself, with errors
    naming the field: ``images`` / ``annotations`` / ``categories`` lists,
    positive unique annotation ids (COCOeval uses id 0 as "unmatched", so a gt
    annotation with id 0 can be matched by many detections), and the
    ``image_id``, ``category_id``, ``bbox``, ``area``, ``iscrowd`` fields.
    """
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        path = os.fspath(gt)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"COCO ground-truth json not found: {path!r}")
        try:
            with open(path) as f:
                dataset = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"COCO ground-truth file {path!r} is not valid JSON: {e}") from e
        where = repr(path)
    elif isinstance(gt, Mapping):
        dataset = dict(gt)
        where = "the ground-truth dict"
    else:
        raise TypeError(
            f"gt must be a dict, a path to a COCO json, or a pycocotools COCO, got {type(gt).__name__}"
        )
    if not isinstance(dataset, dict):
        raise ValueError(f"{where}: expected a JSON object at the top level, got {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{where}: field {key!r} must be a list")
    seen: set[int] = set()
    for j, ann in enumerate(dataset["annotations"]):
        for key in ("id", "image_id", "category_id", "bbox", "area", "iscrowd"):
            if key not in ann:
                raise ValueError(f"{where}: annotations[{j}] has no {key!r} field")
        if not isinstance(ann["id"], (int, np.integer)) or ann["id"] <= 0:
            raise ValueError(
                f"{where}: annotations[{j}]['id'] = {ann['id']!r}; COCOeval needs positive "
                "integer annotation ids (0 means 'unmatched' inside it)"
            )
        if ann["id"] in seen:
            raise ValueError(f"{where}: annotation id {ann['id']} appears more than once")
        seen.add(ann["id"])
    coco = COCO()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def _check_results(coco_gt: COCO, results: Sequence[Mapping[str, Any]], iou_type: str) -> None:
    """Raises ValueError for results pycocotools would reject cryptically or ignore silently."""
    image_ids = set(coco_gt.getImgIds())
    category_ids = set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        for key in ("image_id", "category_id", "score"):
            if key not in r:
                raise ValueError(f"results[{i}] has no {key!r} field")
        if r["image_id"] not in image_ids:
            raise ValueError(
                f"results[{i}]['image_id'] = {r['image_id']!r} is not an image of the ground truth"
            )
        if r["category_id"] not in category_ids:
            raise ValueError(
                f"results[{i}]['category_id'] = {r['category_id']!r} is not a ground-truth category "
                f"(categories: {sorted(category_ids)}); map contiguous labels with "
                "detections_to_coco(label_to_category_id=...)"
            )
        if iou_type == "bbox" and "bbox" not in r:
            raise ValueError(f"results[{i}] has no 'bbox' field, needed for bbox evaluation")
        if iou_type == "segm":
            seg = r.get("segmentation")
            if not isinstance(seg, Mapping) or "counts" not in seg or "size" not in seg:
                raise ValueError(
                    f"results[{i}] has no compressed-RLE 'segmentation' "
                    "({'size': [H, W], 'counts': ...}), needed for segm evaluation; "
                    "pass masks to detections_to_coco or evaluate with iou_types=('bbox',)"
                )
            img = coco_gt.imgs[r["image_id"]]
            if "height" in img and "width" in img:
                expected = [int(img["height"]), int(img["width"])]
                if [int(s) for s in seg["size"]] != expected:
                    raise ValueError(
                        f"results[{i}]['segmentation'] has size {list(seg['size'])} but image "
                        f"{r['image_id']} is {expected} (H, W); masks must be pasted at the "
                        "original image size"
                    )
        if iou_type == "keypoints" and not isinstance(r.get("keypoints"), (list, tuple)):
            raise ValueError(
                f"results[{i}] has no 'keypoints' list [x1, y1, v1, ...], needed for "
                "keypoints evaluation; pass keypoints to detections_to_coco"
            )


# ----------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------


def evaluate_coco(
    gt: Mapping[str, Any] | str | os.PathLike | COCO,
    results: Sequence[Mapping[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    print_fn: Callable[[str], Any] | None = print,
    per_category: bool = False,
    kpt_oks_sigmas: Sequence[float] | None = None,
) -> dict[str, float]:
    """Runs pycocotools COCOeval for each IoU type and returns Detectron2-style numbers.

    Args:
      gt: ground truth as a COCO dict, a path to a COCO json, or a ``COCO``.
      results: COCO result dicts (e.g. concatenated :func:`detections_to_coco`
        outputs over all images). Not modified.
      iou_types: any of ``"bbox"``, ``"segm"``, ``"keypoints"``.
      print_fn: receives pycocotools' output (the summary table) as one
        string per IoU type, e.g. ``print`` or ``logging.info``; None is silent.
      per_category: also return ``f"{iou_type}/AP-{category name}"`` for each
        ground-truth category (see :func:`per_category_ap`), as Detectron2 does.
      kpt_oks_sigmas: per-keypoint OKS sigmas for ``keypoints`` (COCOeval's
        ``params.kpt_oks_sigmas``); None keeps pycocotools' 17 COCO sigmas.

    Returns:
      ``{f"{iou_type}/{name}": value}`` for name in AP, AP50, AP75, APs, APm,
      APl, in percent (x100). A size range without ground truth (pycocotools'
      -1) is NaN; an IoU type with no results at all gives 0.0 for all six
      (and for every per-category AP).

    Raises:
      ValueError: malformed gt, unknown image/category ids in ``results``,
        segm requested without RLE masks, or masks of the wrong size.
    """
    for t in iou_types:
        if t not in _IOU_TYPES:
            raise ValueError(f"unsupported iou type {t!r}; expected one of {_IOU_TYPES}")
    emit = print_fn if print_fn is not None else (lambda s: None)
    coco_gt = load_coco_gt(gt)

    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        if len(results) == 0:
            emit(
                f"COCO {iou_type} evaluation: no detections; reporting 0.0 for "
                f"{', '.join(METRIC_NAMES)}."
            )
            metrics.update({f"{iou_type}/{name}": 0.0 for name in metric_names(iou_type)})
            if per_category:
                for cat in coco_gt.loadCats(coco_gt.getCatIds()):
                    metrics[f"{iou_type}/AP-{cat.get('name', cat['id'])}"] = 0.0
            continue
        _check_results(coco_gt, results, iou_type)
        # loadRes writes id/area/iscrowd into the dicts: give it copies.
        dts = [dict(r) for r in results]
        if iou_type == "segm":
            # Without a bbox field loadRes takes area (hence APs/APm/APl) from the mask.
            for d in dts:
                d.pop("bbox", None)
        coco_eval, text = _run_cocoeval(coco_gt, dts, iou_type, kpt_oks_sigmas)
        emit(f"COCO {iou_type} evaluation ({len(results)} detections):\n{text.rstrip()}")
        for name, value in zip(metric_names(iou_type), coco_eval.stats):
            metrics[f"{iou_type}/{name}"] = float("nan") if value < 0 else float(value) * 100.0
        if per_category:
            per_cat = per_category_ap(coco_eval)
            emit(
                f"COCO {iou_type} per-category AP: "
                + ", ".join(f"{k}: {v:.3f}" for k, v in per_cat.items())
            )
            metrics.update({f"{iou_type}/AP-{k}": v for k, v in per_cat.items()})
    return metrics


def _run_cocoeval(coco_gt: COCO, dts: list[dict[str, Any]], iou_type: str,
                  kpt_oks_sigmas: Sequence[float] | None = None) -> tuple[COCOeval, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(dts)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if iou_type == "keypoints":
            sigmas = coco_eval.params.kpt_oks_sigmas if kpt_oks_sigmas is None else (
                np.asarray(kpt_oks_sigmas, np.float64))
            k = len(dts[0]["keypoints"]) // 3
            if len(sigmas) != k:
                raise ValueError(
                    f"keypoints evaluation needs one OKS sigma per keypoint: {k} keypoints, "
                    f"{len(sigmas)} sigmas (set config.data.keypoint_sigmas)")
            coco_eval.params.kpt_oks_sigmas = sigmas
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval, buf.getvalue()


def per_category_ap(coco_eval: COCOeval) -> dict[str, float]:
    """Per-category AP (IoU 0.50:0.95, all areas, maxDets 100) in percent.

    Args:
      coco_eval: a ``COCOeval`` after ``accumulate()``.

    Returns:
      ``{category name: AP}``; NaN for a category without ground truth.
    """
    if not coco_eval.eval:
        raise ValueError("per_category_ap needs a COCOeval on which accumulate() has run")
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    params = coco_eval.params
    area = params.areaRngLbl.index("all")
    max_det = len(params.maxDets) - 1
    out = {}
    for k, cat_id in enumerate(params.catIds):
        p = precision[:, :, k, area, max_det]
        p = p[p > -1]
        name = coco_eval.cocoGt.cats.get(cat_id, {}).get("name", str(cat_id))
        out[name] = float(np.mean(p) * 100.0) if p.size else float("nan")
    return out


# ----------------------------------------------------------------------------
# metrics.json
# ----------------------------------------------------------------------------


def _json_number(key: str, value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"metric {key!r} is a bool, expected a number")
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {key!r} = {value!r} is not a number") from None
    return value if math.isfinite(value) else None


def write_metrics_json(path: str | os.PathLike, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes ``{"step": step, **metrics}`` to ``path`` as strict JSON, atomically.

    NaN and +-inf become ``null`` (JSON has no NaN). The file is written to a
    temporary file in the same directory and renamed over ``path``, so a
    reader never sees a half-written file. Parent directories are created.
    """
    if "step" in metrics:
        raise ValueError("metrics must not contain a 'step' key; pass the step separately")
    payload: dict[str, Any] = {"step": int(step)}
    for key, value in metrics.items():
        payload[str(key)] = _json_number(str(key), value)
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".metrics-", suffix=".json.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; metrics are meant to be read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
