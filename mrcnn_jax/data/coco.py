"""COCO 2017, and any COCO-format instance-segmentation dataset, as TFDS.

TFDS's stock ``coco`` has no instance masks, so this is a builder of its own,
``mrcnn_coco`` (version 1.0.0), prepared from local files only (nothing is
downloaded). Two kinds of builder config:

* ``coco2017``: COCO 2017 from a manual directory laid out as::

      <manual_dir>/train2017/*.jpg
      <manual_dir>/val2017/*.jpg
      <manual_dir>/annotations/instances_train2017.json
      <manual_dir>/annotations/instances_val2017.json

  (splits ``train`` and ``validation``).
* ``custom_<hash>``: any COCO-format dataset, given an annotation json and an
  image folder per split (:func:`coco_format_config`; either split may be left
  out, e.g. to evaluate on a validation set alone). The name is a hash of the
  absolute paths, so each dataset gets its own directory in ``data_dir``; to
  rebuild after editing a json in place, delete that directory (a changed
  json is detected by size and mtime and logged as a warning).

Usage::

    builder = coco_builder(data_dir, manual_dir="/data/coco")   # or
    builder = coco_builder(data_dir, train_json=..., train_images=...,
                           val_json=..., val_images=...)
    ds = load_coco("train", data_dir, manual_dir="/data/coco")  # pipeline input
    coco_label_map(builder)    # {1: 1, 2: 2, ..., 80: 90}  (label -> category)
    coco_class_names(builder)  # ["person", "bicycle", ...]  (0-based)
    coco_gt_json("validation", data_dir, manual_dir="/data/coco")  # for COCOeval

Features of one example (one image):

=====================  =========================================================
``image``              the image file's own bytes when it is a JPEG or PNG, else
                       (BMP, GIF, TIFF, WebP, ...) re-encoded at build time as
                       an RGB PNG. Decoded (by TFDS with ``decode=True``, or by
                       the pipeline) with ``decode_image(channels=3)``, which
                       turns grayscale, palette, CMYK and 16-bit images into
                       RGB and drops an alpha channel (not composited). EXIF
                       orientation is ignored: annotations refer to the pixels
                       as stored, as in the COCO json.
``image_id``           int64, the COCO ``images[].id`` (0 <= id < 2**31, the
                       pipeline's int32)
``file_name``          text, ``images[].file_name``
``height``, ``width``  int64, from the json (checked against the image)
``objects/id``         int64, the annotation id
``objects/bbox``       TFDS ``BBox``: normalised ``(ymin, xmin, ymax, xmax)``
                       of the json ``bbox`` ``[x, y, w, h]`` clipped to the
                       image
``objects/label``      int64, contiguous 0-based class index: categories sorted
                       by id (the pipeline adds 1)
``objects/category_id``  int64, the json ``category_id``
``objects/is_crowd``   bool, ``iscrowd``
``objects/mask``       uint8 [H, W, 1], values 0/1, one PNG per object,
                       rasterised with pycocotools from polygons (several per
                       object are merged) or RLE (compressed or uncompressed)
``objects/area``       float32, the json ``area`` (mask area if absent)
=====================  =========================================================

The class names and category ids (sorted by id) are stored in the dataset's
metadata (:func:`coco_class_names`, :func:`coco_label_map`) together with
per-split counts of what was skipped (:func:`coco_split_stats`).

Bad input is found at build time, in Python (preparation is the one-time
step; the tf.data hot path then only sees data that decodes):

===============================  ============================================
missing annotation json          ``FileNotFoundError`` naming the path
json that does not parse         ``ValueError`` naming the path
json missing a required key      ``ValueError`` naming the json, the record
(``images``/``annotations``/     (``annotations[j]`` and its id) and the key.
``categories``; image ``id``,    ``iscrowd`` (default 0) and ``area`` (default
``file_name``, ``height``,       mask area) are optional.
``width``; annotation ``id``,
``image_id``, ``category_id``,
``bbox``, ``segmentation``;
category ``id``, ``name``), a
wrong type, duplicate ids
categories differing between     ``ValueError`` naming both jsons
the train and validation jsons
missing image file(s)            ``FileNotFoundError`` before any example is
                                 written, naming the json, the image folder and
                                 the first missing files with their image ids
corrupt / undecodable image,     ``ValueError`` naming the file and image id
or size differing from the json  (checked by decoding it with TensorFlow's own
                                 decoder, as the pipeline will)
unknown ``category_id``          skipped and counted; logged as "skipped N
                                 annotations with unknown category ids: [...]"
unknown ``image_id``             skipped and counted; logged
box wholly outside the image or  skipped and counted; logged (a box partly
of zero area                     outside is clipped)
polygon with an odd number of    that polygon is skipped and counted (the
coordinates or under 3 points    object keeps its other polygons); an object
                                 left with no polygon is skipped and counted
                                 (as Detectron2 does); logged
other malformed segmentation     ``ValueError`` naming the json and the
(not a list of polygons nor an   annotation id: RLE ``size`` differing from the
RLE dict, non-numeric or non-    image, ``counts`` that are not a valid RLE of
finite coordinates, bad RLE)     ``height * width`` pixels, ...
===============================  ============================================

Images without annotations are kept (evaluation needs them); training can
skip them with ``load_coco(..., skip_empty=True)``.

Evaluation uses the original json (:func:`coco_gt_json`): image ids and
category ids are preserved, and whatever the builder skipped stays in the
ground truth there, as with Detectron2 (COCOeval itself ignores annotations of
unknown images or categories).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
from PIL import Image as PILImage
from pycocotools import mask as mask_utils
import tensorflow as tf
import tensorflow_datasets as tfds

from mrcnn_jax.data import hide_accelerators_from_tf
from mrcnn_jax.data.tfds_util import SourceFileCodePath, png_bytes

hide_accelerators_from_tf()

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
LABEL_SPACES = ("contiguous", "coco_ids")

_COCO2017_LAYOUT = {
    "train": ("annotations/instances_train2017.json", "train2017"),
    "validation": ("annotations/instances_val2017.json", "val2017"),
}
_MAX_LISTED = 20  # ids listed in a log line or an error
_INT32_MAX = 2**31 - 1

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Place COCO 2017 in the manual directory (nothing is downloaded):
  <manual_dir>/train2017/              118287 JPEGs (train2017.zip)
  <manual_dir>/val2017/                5000 JPEGs (val2017.zip)
  <manual_dir>/annotations/instances_train2017.json
  <manual_dir>/annotations/instances_val2017.json
                                       (annotations_trainval2017.zip)
"""


# ------------------------------------------------------------------------------
# Builder configs.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class CocoConfig(tfds.core.BuilderConfig):
  """Where a ``mrcnn_coco`` variant comes from.

  ``coco2017`` leaves the paths empty and reads the manual directory; a
  custom config names an annotation json and an image folder per split.
  """

  train_json: str | None = None
  train_images: str | None = None
  val_json: str | None = None
  val_images: str | None = None

  def sources(self) -> dict[str, tuple[str, str]]:
    """{split: (json path, image folder)} of a custom config."""
    out = {}
    if self.train_json:
      out["train"] = (self.train_json, self.train_images)
    if self.val_json:
      out["validation"] = (self.val_json, self.val_images)
    return out


COCO2017 = CocoConfig(
    name="coco2017",
    description="COCO 2017 train/val instances from a manual directory.")


def coco_format_config(train_json=None, train_images=None, val_json=None,
                       val_images=None) -> CocoConfig:
  """The builder config of a COCO-format dataset (one json + folder a split).

  Either split may be left out, not both. The config is named
  ``custom_<12 hex digits>``, a hash of the absolute paths.
  """
  pairs = {"train": (train_json, train_images),
           "validation": (val_json, val_images)}
  paths = {}
  for split, (js, images) in pairs.items():
    prefix = "train" if split == "train" else "val"
    if (js is None) != (images is None):
      raise ValueError(f"coco_format_config: give both {prefix}_json and "
                       f"{prefix}_images, or neither (got {prefix}_json="
                       f"{js!r}, {prefix}_images={images!r})")
    if js is not None:
      paths[f"{prefix}_json"] = os.path.abspath(os.fspath(js))
      paths[f"{prefix}_images"] = os.path.abspath(os.fspath(images))
  if not paths:
    raise ValueError("coco_format_config: give train_json + train_images "
                     "and/or val_json + val_images")
  digest = hashlib.sha1(
      json.dumps(paths, sort_keys=True).encode("utf-8")).hexdigest()[:12]
  return CocoConfig(
      name=f"custom_{digest}",
      description="COCO-format dataset: " + ", ".join(
          f"{k}={v}" for k, v in sorted(paths.items())),
      **paths)


# ------------------------------------------------------------------------------
# Reading and checking the annotation json (Python, build time).
# ------------------------------------------------------------------------------


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not (
      isinstance(x, bool))


def _listed(ids: Iterable[Any]) -> str:
  ids = sorted(set(ids))
  head = ", ".join(str(i) for i in ids[:_MAX_LISTED])
  more = f", ... ({len(ids) - _MAX_LISTED} more)" if len(ids) > _MAX_LISTED else ""
  return f"[{head}{more}]"


def _load_json(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"mrcnn_coco: annotation json not found: {path}")
  try:
    with open(path, "rb") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"mrcnn_coco: {path} is not valid JSON: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"mrcnn_coco: {path}: expected a JSON object at the top "
                     f"level, got {type(data).__name__}")
  for key in ("images", "annotations", "categories"):
    if key not in data:
      raise ValueError(f"mrcnn_coco: {path} has no top-level key {key!r} "
                       f"(has {sorted(data)})")
    if not isinstance(data[key], list):
      raise ValueError(f"mrcnn_coco: {path}: {key!r} must be a list, got "
                       f"{type(data[key]).__name__}")
  return data


def _record(path: str, kind: str, index: int, record, keys) -> None:
  """Raises naming the json, the record and the first missing key."""
  if not isinstance(record, dict):
    raise ValueError(f"mrcnn_coco: {path}: {kind}[{index}] must be an object, "
                     f"got {type(record).__name__}")
  for key in keys:
    if key not in record:
      rid = f" (id {record['id']})" if "id" in record else ""
      raise ValueError(f"mrcnn_coco: {path}: {kind}[{index}]{rid} has no "
                       f"required key {key!r}")


def _categories(path: str, data) -> list[tuple[int, str]]:
  """[(category id, name)] sorted by id."""
  cats = {}
  for i, cat in enumerate(data["categories"]):
    _record(path, "categories", i, cat, ("id", "name"))
    if not _is_int(cat["id"]):
      raise ValueError(f"mrcnn_coco: {path}: categories[{i}]['id'] must be an "
                       f"integer, got {cat['id']!r}")
    if cat["id"] in cats:
      raise ValueError(f"mrcnn_coco: {path}: category id {cat['id']} appears "
                       "more than once")
    cats[int(cat["id"])] = str(cat["name"])
  if not cats:
    raise ValueError(f"mrcnn_coco: {path}: 'categories' is empty")
  return sorted(cats.items())


def _rle_string_counts(counts: bytes) -> list[int] | None:
  """Run lengths of a compressed COCO RLE string (pycocotools' rleFrString);
  None if the string is malformed."""
  out, p, n = [], 0, len(counts)
  while p < n:
    x, k, more = 0, 0, True
    while more:
      if p >= n:
        return None
      c = counts[p] - 48
      if not 0 <= c < 64:
        return None
      x |= (c & 0x1F) << (5 * k)
      more = bool(c & 0x20)
      p += 1
      k += 1
      if not more and (c & 0x10):
        x |= -1 << (5 * k)
    if len(out) > 2:
      x += out[-2]
    out.append(x)
  return out


@dataclasses.dataclass
class _Object:
  """One annotation that passed the checks (original pixels)."""

  id: int
  label: int
  category_id: int
  is_crowd: bool
  box: tuple[float, float, float, float]  # clipped (x1, y1, x2, y2)
  area: float | None
  polygons: list[list[float]] | None  # or
  rle: dict[str, Any] | None  # {"size": [h, w], "counts": bytes | list}


@dataclasses.dataclass
class _Image:
  id: int
  file_name: str
  height: int
  width: int
  objects: list[_Object] = dataclasses.field(default_factory=list)


def _segmentation(path, ann, height, width, counters):
  """(polygons, rle) of one annotation; raises on malformed input, returns
  (None, None) when no valid polygon is left (counted)."""
  seg, aid = ann["segmentation"], ann["id"]
  where = f"mrcnn_coco: {path}: annotation id {aid}"
  if isinstance(seg, list):
    polygons = []
    for poly in seg:
      if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
        raise ValueError(
            f"{where}: 'segmentation' must be a list of polygons [[x1, y1, x2, "
            f"y2, ...], ...] of numbers or an RLE dict, got {str(seg)[:80]}")
      if not all(math.isfinite(v) for v in poly):
        raise ValueError(f"{where}: 'segmentation' has non-finite coordinates")
      if len(poly) % 2 or len(poly) < 6:
        counters["invalid_polygon"].append(aid)
        continue
      polygons.append(poly)  # the json's own list: no copy
    if not polygons:
      counters["no_valid_segmentation"].append(aid)
      return None, None
    return polygons, None
  if isinstance(seg, dict):
    if "counts" not in seg or "size" not in seg:
      raise ValueError(f"{where}: RLE 'segmentation' needs 'counts' and "
                       f"'size', has {sorted(seg)}")
    size = seg["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
        or [int(s) if _is_int(s) else s for s in size] != [height, width]):
      raise ValueError(f"{where}: RLE 'size' {size!r} differs from the image's "
                       f"[height, width] = {[height, width]}")
    counts = seg["counts"]
    if isinstance(counts, list):
      runs = counts if all(_is_int(c) for c in counts) else None
    elif isinstance(counts, (str, bytes)):
      try:
        counts = counts.encode("ascii") if isinstance(counts, str) else counts
        runs = _rle_string_counts(counts)
      except UnicodeEncodeError:
        runs = None
    else:
      runs = None
    if runs is None or any(r < 0 for r in runs) or sum(runs) != height * width:
      raise ValueError(
          f"{where}: RLE 'counts' is not a valid run-length encoding of "
          f"{height} x {width} = {height * width} pixels (uncompressed: a list "
          "of non-negative ints summing to height * width; compressed: "
          "pycocotools' string)")
    return None, {"size": [height, width], "counts": counts}
  raise ValueError(f"{where}: 'segmentation' must be a list of polygons or an "
                   f"RLE dict, got {type(seg).__name__}")


def _read_split(path: str, data: Mapping[str, Any], category_ids: list[int]
                ) -> tuple[list[_Image], dict]:
  """Checks one annotation json (`data`, read from `path`); returns its images
  (with their objects, in json order) and the counts of what was skipped."""
  label_of = {cid: i for i, cid in enumerate(category_ids)}
  images: dict[int, _Image] = {}
  for i, img in enumerate(data["images"]):
    _record(path, "images", i, img, ("id", "file_name", "height", "width"))
    iid = img["id"]
    if not _is_int(iid) or not 0 <= iid <= _INT32_MAX:
      raise ValueError(f"mrcnn_coco: {path}: images[{i}]['id'] = {iid!r}; "
                       f"image ids must be integers in [0, 2**31) (the "
                       "pipeline carries them as int32, -1 marks padding)")
    for key in ("height", "width"):
      if not _is_int(img[key]) or img[key] < 1:
        raise ValueError(f"mrcnn_coco: {path}: images[{i}] (id {iid}) has "
                         f"{key!r} = {img[key]!r}; expected a positive int")
    if not isinstance(img["file_name"], str) or not img["file_name"]:
      raise ValueError(f"mrcnn_coco: {path}: images[{i}] (id {iid}) has "
                       f"'file_name' = {img['file_name']!r}")
    if iid in images:
      raise ValueError(f"mrcnn_coco: {path}: image id {iid} appears more than "
                       "once")
    images[int(iid)] = _Image(int(iid), img["file_name"], int(img["height"]),
                              int(img["width"]))

  counters = collections.defaultdict(list)
  unknown_categories = []
  seen_ids = set()
  for j, ann in enumerate(data["annotations"]):
    _record(path, "annotations", j, ann,
            ("id", "image_id", "category_id", "bbox", "segmentation"))
    aid = ann["id"]
    if not _is_int(aid):
      raise ValueError(f"mrcnn_coco: {path}: annotations[{j}]['id'] must be an "
                       f"integer, got {aid!r}")
    if aid in seen_ids:
      raise ValueError(f"mrcnn_coco: {path}: annotation id {aid} appears more "
                       "than once")
    seen_ids.add(aid)
    where = f"mrcnn_coco: {path}: annotation id {aid}"
    for key in ("image_id", "category_id"):
      if not _is_int(ann[key]):
        raise ValueError(f"{where}: {key!r} must be an integer, got "
                         f"{ann[key]!r}")
    crowd = ann.get("iscrowd", 0)
    if not (_is_number(crowd) or isinstance(crowd, bool)) or crowd not in (0, 1):
      raise ValueError(f"{where}: 'iscrowd' must be 0 or 1, got {crowd!r}")
    bbox = ann["bbox"]
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
        or not all(_is_number(v) and math.isfinite(v) for v in bbox)):
      raise ValueError(f"{where}: 'bbox' must be [x, y, width, height] (4 "
                       f"finite numbers), got {bbox!r}")
    area = ann.get("area")
    if area is not None and not (_is_number(area) and math.isfinite(area)):
      raise ValueError(f"{where}: 'area' must be a finite number, got {area!r}")
    if ann["category_id"] not in label_of:
      unknown_categories.append(ann["category_id"])
      counters["unknown_category"].append(aid)
      continue
    image = images.get(ann["image_id"])
    if image is None:
      counters["unknown_image"].append(aid)
      continue
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, float(image.width)), min(y + h, float(image.height))
    if not (x2 > x1 and y2 > y1):
      counters["empty_box"].append(aid)
      continue
    polygons, rle = _segmentation(path, ann, image.height, image.width,
                                  counters)
    if polygons is None and rle is None:
      continue
    image.objects.append(_Object(
        id=int(aid), label=label_of[ann["category_id"]],
        category_id=int(ann["category_id"]), is_crowd=bool(crowd),
        box=(x1, y1, x2, y2), area=None if area is None else float(area),
        polygons=polygons, rle=rle))
  stats = {
      "num_images": len(images),
      "num_annotations": len(data["annotations"]),
      "num_objects": sum(len(im.objects) for im in images.values()),
      "num_crowd": sum(o.is_crowd for im in images.values() for o in im.objects),
      "num_images_without_objects": sum(
          not im.objects for im in images.values()),
      "num_images_without_non_crowd_objects": sum(
          not any(not o.is_crowd for o in im.objects)
          for im in images.values()),
      "unknown_category_ids": sorted(set(unknown_categories)),
  }
  for key in ("unknown_category", "unknown_image", "empty_box",
              "no_valid_segmentation", "invalid_polygon"):
    stats[f"skipped_{key}"] = len(counters[key])
    stats[f"skipped_{key}_annotation_ids"] = sorted(set(counters[key]))[
        :_MAX_LISTED]
  return list(images.values()), stats


def _log_skipped(split: str, stats: Mapping[str, Any]) -> None:
  name = f"mrcnn_coco/{split}"
  n = stats["skipped_unknown_category"]
  if n:
    log.warning("%s: skipped %d annotations with unknown category ids: %s",
                name, n, _listed(stats["unknown_category_ids"]))
  messages = {
      "unknown_image": "with unknown image ids",
      "empty_box": "whose box lies outside the image or has zero area",
      "no_valid_segmentation": "without a valid polygon (each has an odd "
                               "number of coordinates or under 3 points)",
      "invalid_polygon": "polygons (not annotations) with an odd number of "
                         "coordinates or under 3 points",
  }
  for key, what in messages.items():
    n = stats[f"skipped_{key}"]
    if n:
      noun = "" if key == "invalid_polygon" else "annotations "
      ids = stats[f"skipped_{key}_annotation_ids"]
      first = f" (first {len(ids)})" if len(ids) == _MAX_LISTED else ""
      log.warning("%s: skipped %d %s%s; annotation ids%s %s", name, n, noun,
                  what, first, _listed(ids))
  log.info("%s: %d images, %d objects (%d crowd) from %d annotations; %d "
           "images without objects", name, stats["num_images"],
           stats["num_objects"], stats["num_crowd"], stats["num_annotations"],
           stats["num_images_without_objects"])


def _check_files(path: str, images_dir: str, images: list[_Image]) -> None:
  """Raises before anything is written if image files are missing."""
  if not os.path.isdir(images_dir):
    raise FileNotFoundError(f"mrcnn_coco: image folder {images_dir} (for "
                            f"{path}) does not exist")
  missing = [im for im in images
             if not os.path.isfile(os.path.join(images_dir, im.file_name))]
  if missing:
    listed = ", ".join(f"{im.file_name} (image id {im.id})"
                       for im in missing[:_MAX_LISTED])
    more = f", ... ({len(missing) - _MAX_LISTED} more)" if len(
        missing) > _MAX_LISTED else ""
    raise FileNotFoundError(
        f"mrcnn_coco: {len(missing)} image file(s) of {path} missing from "
        f"{images_dir}: {listed}{more}")


# ------------------------------------------------------------------------------
# Encoding one image (Python, build time).
# ------------------------------------------------------------------------------


def _image_bytes(file_path: str, image: _Image) -> tuple[bytes, bool]:
  """(bytes to store, whether they were re-encoded); raises ValueError naming
  the file if it does not decode to the json's size."""
  where = f"mrcnn_coco: image {file_path} (image id {image.id})"
  with open(file_path, "rb") as f:
    data = f.read()
  try:
    with PILImage.open(io.BytesIO(data)) as pil:
      fmt = pil.format
      if fmt not in ("JPEG", "PNG"):
        pil.load()
        data = png_bytes(np.asarray(pil.convert("RGB")))
  except Exception as e:  # PIL raises many types for bad files.
    raise ValueError(f"{where} cannot be read as an image: {e}") from e
  # Decode with the pipeline's own decoder, so what passes here decodes there.
  try:
    shape = tf.io.decode_image(data, channels=3, expand_animations=False).shape
  except (tf.errors.InvalidArgumentError, tf.errors.OpError) as e:
    raise ValueError(f"{where} is corrupt ({fmt}): {e.message}") from e
  if tuple(shape[:2]) != (image.height, image.width):
    raise ValueError(f"{where} is {shape[0]} x {shape[1]} (height x width) "
                     f"but the json says {image.height} x {image.width}")
  return data, fmt not in ("JPEG", "PNG")


def _object_feature(obj: _Object, height: int, width: int) -> dict[str, Any]:
  if obj.polygons is not None:
    rle = mask_utils.merge(mask_utils.frPyObjects(obj.polygons, height, width))
  elif isinstance(obj.rle["counts"], list):
    rle = mask_utils.frPyObjects(obj.rle, height, width)
  else:
    rle = obj.rle
  mask = mask_utils.decode(rle)  # uint8 [H, W], Fortran order
  x1, y1, x2, y2 = obj.box
  return {
      "id": obj.id,
      "bbox": tfds.features.BBox(ymin=y1 / height, xmin=x1 / width,
                                 ymax=y2 / height, xmax=x2 / width),
      "label": obj.label,
      "category_id": obj.category_id,
      "is_crowd": obj.is_crowd,
      # 8-bit 0/1: decodes ~1.8x faster in the pipeline than a 1-bit PNG.
      "mask": png_bytes(np.ascontiguousarray(mask)),
      "area": obj.area if obj.area is not None else float(
          mask_utils.area(rle)),
  }


def _encode_image(images_dir: str, image: _Image) -> tuple[dict, bool]:
  data, reencoded = _image_bytes(os.path.join(images_dir, image.file_name),
                                 image)
  return {
      "image": data,
      "image_id": image.id,
      "file_name": image.file_name,
      "height": image.height,
      "width": image.width,
      "objects": [_object_feature(o, image.height, image.width)
                  for o in image.objects],
  }, reencoded


def _imap_ordered(fn: Callable, items: list, workers: int) -> Iterator:
  """fn over items on a thread pool, results in order, a bounded window in
  flight (decoding, rasterising and PNG-encoding release the GIL in part)."""
  if workers <= 1:
    yield from map(fn, items)
    return
  window = 4 * workers
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= window:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


# ------------------------------------------------------------------------------
# TFDS builder.
# ------------------------------------------------------------------------------


def _source_fingerprint(path: str) -> dict[str, Any]:
  st = os.stat(path)
  return {"size": int(st.st_size), "mtime": float(st.st_mtime)}


class MrcnnCoco(SourceFileCodePath, tfds.core.GeneratorBasedBuilder):
  """COCO-format instance segmentation (boxes, classes, crowd, masks)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [COCO2017]
  DEFAULT_CONFIG_NAME = "coco2017"
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[1],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3),
                                         dtype=np.uint8),
            "image_id": tfds.features.Scalar(dtype=np.int64),
            "file_name": tfds.features.Text(),
            "height": tfds.features.Scalar(dtype=np.int64),
            "width": tfds.features.Scalar(dtype=np.int64),
            "objects": tfds.features.Sequence({
                "id": tfds.features.Scalar(dtype=np.int64),
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.Scalar(dtype=np.int64),
                "category_id": tfds.features.Scalar(dtype=np.int64),
                "is_crowd": tfds.features.Scalar(dtype=np.bool_),
                "mask": tfds.features.Image(
                    shape=(None, None, 1), dtype=np.uint8,
                    encoding_format="png"),
                "area": tfds.features.Scalar(dtype=np.float32),
            }),
        }),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(),
    )

  def _sources(self, dl_manager) -> dict[str, tuple[str, str]]:
    cfg = self.builder_config
    if cfg.name == COCO2017.name:
      manual_dir = os.fspath(dl_manager.manual_dir)
      return _coco2017_sources(manual_dir)
    return cfg.sources()

  def _split_generators(self, dl_manager):
    sources = self._sources(dl_manager)
    categories, source_of_categories = None, None
    metadata = self.info.metadata
    metadata["splits"] = {}
    generators = {}
    for split, (json_path, images_dir) in sources.items():
      data = _load_json(json_path)
      cats = _categories(json_path, data)
      if categories is None:
        categories, source_of_categories = cats, json_path
        metadata["class_names"] = [name for _, name in categories]
        metadata["category_ids"] = [cid for cid, _ in categories]
      elif cats != categories:
        raise ValueError(
            f"mrcnn_coco: the categories of {json_path} differ from those of "
            f"{source_of_categories}; both splits need the same (id, name) "
            "list")
      images, stats = _read_split(json_path, data,
                                  metadata["category_ids"])
      del data  # the images keep what they need
      _check_files(json_path, images_dir, images)
      _log_skipped(split, stats)
      stats.update(json=json_path, images=images_dir,
                   json_fingerprint=_source_fingerprint(json_path))
      metadata["splits"][split] = stats
      generators[split] = self._generate_examples(split, images_dir, images,
                                                  stats)
    return generators

  def _generate_examples(self, split, images_dir, images, stats):
    workers = min(8, os.cpu_count() or 1)
    encode = lambda im: (im.id, _encode_image(images_dir, im))
    reencoded = 0
    for image_id, (example, was_reencoded) in _imap_ordered(encode, images,
                                                            workers):
      reencoded += was_reencoded
      yield image_id, example
    stats["num_reencoded_images"] = reencoded
    if reencoded:
      log.info("mrcnn_coco/%s: re-encoded %d images that were neither JPEG "
               "nor PNG as RGB PNG", split, reencoded)


def _coco2017_sources(manual_dir: str) -> dict[str, tuple[str, str]]:
  sources, missing = {}, []
  for split, (js, images) in _COCO2017_LAYOUT.items():
    js, images = os.path.join(manual_dir, js), os.path.join(manual_dir, images)
    missing += [p for p in (js, images) if not os.path.exists(p)]
    sources[split] = (js, images)
  if missing:
    raise FileNotFoundError(
        f"mrcnn_coco/coco2017: {manual_dir} lacks {missing}.\n"
        + MANUAL_DOWNLOAD_INSTRUCTIONS)
  return sources


# ------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------


def _config(manual_dir, train_json, train_images, val_json, val_images):
  custom = any(p is not None for p in (train_json, train_images, val_json,
                                       val_images))
  if manual_dir is not None and custom:
    raise ValueError("mrcnn_coco: give manual_dir (COCO 2017) or the "
                     "*_json/*_images paths of a COCO-format dataset, not both")
  if custom:
    return coco_format_config(train_json, train_images, val_json, val_images)
  return COCO2017


def coco_builder(data_dir: str | os.PathLike | None = None, *,
                 manual_dir: str | os.PathLike | None = None,
                 train_json: str | os.PathLike | None = None,
                 train_images: str | os.PathLike | None = None,
                 val_json: str | os.PathLike | None = None,
                 val_images: str | os.PathLike | None = None,
                 prepare: bool = True) -> MrcnnCoco:
  """The ``mrcnn_coco`` builder, prepared into `data_dir` unless it is.

  COCO 2017: pass `manual_dir` (layout in the module docstring) the first
  time; once prepared, ``coco_builder(data_dir)`` finds it. A COCO-format
  dataset: pass its ``*_json`` / ``*_images`` paths (every time: they name the
  config). `data_dir` None means TFDS's default. Nothing is downloaded.
  """
  config = _config(manual_dir, train_json, train_images, val_json, val_images)
  builder = MrcnnCoco(
      data_dir=None if data_dir is None else os.fspath(data_dir),
      config=config)
  if prepare and not builder.is_prepared():
    if config is COCO2017:
      if manual_dir is None:
        raise FileNotFoundError(
            f"mrcnn_coco/coco2017 is not prepared in {builder.data_dir}; pass "
            "manual_dir (scripts/prepare_coco.py --manual_dir ...).\n"
            + MANUAL_DOWNLOAD_INSTRUCTIONS)
      _coco2017_sources(os.fspath(manual_dir))  # clear error before TFDS's
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=None if manual_dir is None else os.fspath(manual_dir),
            try_download_gcs=False,
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
  elif builder.is_prepared():
    _warn_if_sources_changed(builder)
  return builder


def _warn_if_sources_changed(builder: MrcnnCoco) -> None:
  for split, stats in _metadata(builder).get("splits", {}).items():
    path = stats.get("json")
    if path and os.path.isfile(path) and (
        _source_fingerprint(path) != stats.get("json_fingerprint")):
      log.warning("mrcnn_coco/%s: %s changed since the dataset was prepared "
                  "in %s; delete that directory to rebuild it", split, path,
                  builder.data_dir)


def _metadata(builder: MrcnnCoco) -> Mapping[str, Any]:
  metadata = builder.info.metadata
  if metadata is None or "class_names" not in metadata:
    raise ValueError(f"mrcnn_coco: {builder.data_dir} has no class metadata; "
                     "is the dataset prepared (coco_builder(..., "
                     "prepare=True))?")
  return metadata


def coco_class_names(builder: MrcnnCoco,
                     label_space: str = "contiguous") -> list[str]:
  """Class names indexed by 0-based label (the pipeline's label - 1).

  ``label_space="coco_ids"``: indexed by category id - 1, with "N/A" for
  ids that name no category (torchvision's 91-class COCO layout).
  """
  meta = _metadata(builder)
  names = list(meta["class_names"])
  if _label_space(label_space) == "contiguous":
    return names
  by_id = dict(zip(meta["category_ids"], names))
  return [by_id.get(i, "N/A") for i in range(1, max(by_id) + 1)]


def coco_label_map(builder: MrcnnCoco,
                   label_space: str = "contiguous") -> dict[int, int]:
  """{pipeline label (1..K): COCO category id}; for
  ``label_space="coco_ids"`` the identity over 1..max id."""
  meta = _metadata(builder)
  if _label_space(label_space) == "contiguous":
    return {i + 1: int(cid) for i, cid in enumerate(meta["category_ids"])}
  return {i: i for i in range(1, max(meta["category_ids"]) + 1)}


def coco_split_stats(builder: MrcnnCoco, split: str) -> dict[str, Any]:
  """What preparing `split` found: image / object counts and the skipped
  annotations by reason (``skipped_*``), with up to 20 of their ids."""
  splits = _metadata(builder)["splits"]
  if split not in splits:
    raise ValueError(f"mrcnn_coco: split {split!r} is not in this dataset "
                     f"(has {sorted(splits)})")
  return dict(splits[split])


def _label_space(label_space: str) -> str:
  if label_space not in LABEL_SPACES:
    raise ValueError(f"mrcnn_coco: label_space must be one of {LABEL_SPACES}, "
                     f"got {label_space!r}")
  return label_space


def _check_split(builder: MrcnnCoco, split: str) -> None:
  if split not in builder.info.splits:
    raise ValueError(f"mrcnn_coco: unknown split {split!r}; this dataset has "
                     f"{sorted(builder.info.splits)}")


def load_coco(split: str = "train",
              data_dir: str | os.PathLike | None = None, *,
              manual_dir: str | os.PathLike | None = None,
              train_json: str | os.PathLike | None = None,
              train_images: str | os.PathLike | None = None,
              val_json: str | os.PathLike | None = None,
              val_images: str | os.PathLike | None = None,
              decode: bool = False,
              label_space: str = "contiguous",
              skip_empty: bool = False,
              shuffle_files: bool = False,
              read_config: tfds.ReadConfig | None = None) -> tf.data.Dataset:
  """The examples of `split` ("train" / "validation") in the pipeline's input
  layout (see ``pipeline``), plus ``objects/is_crowd`` and the extra fields of
  the module docstring.

  Prepares the dataset on first use (see :func:`coco_builder`). With `decode`
  False (the default), ``image`` and ``objects/mask`` stay encoded bytes and
  the pipeline decodes them after shuffling. ``label_space="coco_ids"``
  makes ``objects/label`` the category id - 1 (so pipeline labels equal COCO
  category ids, as torchvision's 91-class models expect). `skip_empty` drops
  images without a non-crowd object (Detectron2 does so for training; the
  count is in :func:`coco_split_stats` as
  ``num_images_without_non_crowd_objects`` and is logged here). TF ops only.
  """
  builder = coco_builder(data_dir, manual_dir=manual_dir,
                         train_json=train_json, train_images=train_images,
                         val_json=val_json, val_images=val_images)
  _check_split(builder, split)
  decoders = None if decode else {
      "image": tfds.decode.SkipDecoding(),
      "objects": {"mask": tfds.decode.SkipDecoding()},
  }
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_files,
                          read_config=read_config, decoders=decoders)
  if _label_space(label_space) == "coco_ids":
    def to_category(example):
      objects = dict(example["objects"])
      objects["label"] = objects["category_id"] - 1
      return dict(example, objects=objects)
    ds = ds.map(to_category, num_parallel_calls=tf.data.AUTOTUNE)
  if skip_empty:
    n = coco_split_stats(builder, split)["num_images_without_non_crowd_objects"]
    log.info("mrcnn_coco/%s: skipping %d images without a non-crowd object",
             split, n)
    ds = ds.filter(lambda ex: tf.reduce_any(~ex["objects"]["is_crowd"]))
  return ds


def coco_gt_json(split: str = "validation",
                 data_dir: str | os.PathLike | None = None, *,
                 manual_dir: str | os.PathLike | None = None,
                 train_json: str | os.PathLike | None = None,
                 train_images: str | os.PathLike | None = None,
                 val_json: str | os.PathLike | None = None,
                 val_images: str | os.PathLike | None = None) -> str:
  """Path of `split`'s original annotation json, the ground truth for
  pycocotools (image and category ids are those of the prepared dataset)."""
  if split not in SPLITS:
    raise ValueError(f"mrcnn_coco: unknown split {split!r}; expected one of "
                     f"{SPLITS}")
  config = _config(manual_dir, train_json, train_images, val_json, val_images)
  if config is COCO2017 and manual_dir is not None:
    path = _coco2017_sources(os.fspath(manual_dir))[split][0]
  elif config is not COCO2017:
    sources = config.sources()
    if split not in sources:
      raise ValueError(f"mrcnn_coco: no {split} json was given")
    path = sources[split][0]
  else:  # COCO 2017, already prepared: the path recorded at preparation.
    builder = coco_builder(data_dir)
    path = coco_split_stats(builder, split)["json"]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"mrcnn_coco: ground-truth json {path} of split "
                            f"{split!r} not found")
  return path
