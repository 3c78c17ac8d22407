"""COCO-format annotation jsons: where they are, reading, checking, masks.

Plain Python (json, numpy, pycocotools; no TensorFlow), so it can be used and
tested without the TFDS builder in ``coco.py``, which calls it at build time:

* :class:`CocoSource`: the files of a dataset (COCO 2017's manual directory,
  or a json and an image folder per split).
* :func:`load_json`, :func:`categories`, :func:`read_split`: read a json and
  check every record; return the images with the annotations that passed, and
  the counts of what was skipped (:func:`log_skipped` logs them).
* :func:`keypoint_categories`: the keypoint names and skeleton of the
  categories (COCO's person-keypoints format), if any.
* :func:`check_image_files`: raises if image files are missing.
* :func:`object_mask`: the 0/1 mask of one annotation, by pycocotools.

What raises and what is skipped and counted is listed in ``coco.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
from typing import Any, Iterable, Mapping

import numpy as np
from pycocotools import mask as mask_utils

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
LABEL_SPACES = ("contiguous", "coco_ids")

COCO2017_LAYOUT = {
    "train": ("annotations/instances_train2017.json", "train2017"),
    "validation": ("annotations/instances_val2017.json", "val2017"),
}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Place COCO 2017 in the manual directory (nothing is downloaded):
  <manual_dir>/train2017/              118287 JPEGs (train2017.zip)
  <manual_dir>/val2017/                5000 JPEGs (val2017.zip)
  <manual_dir>/annotations/instances_train2017.json
  <manual_dir>/annotations/instances_val2017.json
                                       (annotations_trainval2017.zip)
"""

_MAX_LISTED = 20  # ids listed in a log line or an error
_INT32_MAX = 2**31 - 1
_INT64 = (-2**63, 2**63 - 1)  # annotation and category ids (TFDS int64)


def max_image_pixels() -> int | None:
  """The largest height * width accepted: PIL's decompression-bomb limit
  (2 * ``PIL.Image.MAX_IMAGE_PIXELS``, 178,956,970 by default), past which
  the builder's image reader refuses a file anyway; None if a user lifted it."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  limit = Image.MAX_IMAGE_PIXELS
  return None if limit is None else 2 * int(limit)


# ------------------------------------------------------------------------------
# Where the files are.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CocoSource:
  """The files of a COCO-format dataset; paths are made absolute.

  COCO 2017: ``manual_dir`` (layout in :data:`COCO2017_LAYOUT`), or no path
  at all once the dataset is prepared in the TFDS data dir. Any COCO-format
  dataset: an annotation json and an image folder per split (either split
  may be left out, not both).
  """

  manual_dir: str | None = None
  train_json: str | None = None
  train_images: str | None = None
  val_json: str | None = None
  val_images: str | None = None

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is not None:
        object.__setattr__(self, field.name,
                           os.path.abspath(os.fspath(value)))
    for prefix in ("train", "val"):
      js, images = (getattr(self, f"{prefix}_{k}") for k in ("json", "images"))
      if (js is None) != (images is None):
        raise ValueError(f"CocoSource: give both {prefix}_json and "
                         f"{prefix}_images, or neither (got {prefix}_json="
                         f"{js!r}, {prefix}_images={images!r})")
    if self.manual_dir is not None and not self.is_coco2017:
      raise ValueError("CocoSource: give manual_dir (COCO 2017) or the "
                       "*_json/*_images paths of a COCO-format dataset, not "
                       "both")

  @property
  def is_coco2017(self) -> bool:
    return self.train_json is None and self.val_json is None

  def splits(self) -> dict[str, tuple[str, str]]:
    """{split: (annotation json, image folder)}; for COCO 2017 those under
    ``manual_dir`` (empty without one)."""
    if self.is_coco2017:
      if self.manual_dir is None:
        return {}
      return {split: (os.path.join(self.manual_dir, js),
                      os.path.join(self.manual_dir, images))
              for split, (js, images) in COCO2017_LAYOUT.items()}
    out = {}
    if self.train_json:
      out["train"] = (self.train_json, self.train_images)
    if self.val_json:
      out["validation"] = (self.val_json, self.val_images)
    return out

  def check_manual_dir(self) -> None:
    """Raises FileNotFoundError unless ``manual_dir`` has COCO 2017's files."""
    missing = [p for pair in self.splits().values() for p in pair
               if not os.path.exists(p)]
    if missing:
      raise FileNotFoundError(
          f"mrcnn_coco/coco2017: {self.manual_dir} lacks {missing}.\n"
          + MANUAL_DOWNLOAD_INSTRUCTIONS)


# ------------------------------------------------------------------------------
# Reading and checking a json.
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


def load_json(path: str) -> dict[str, Any]:
  """The json at `path`, checked to have lists ``images``, ``annotations``
  and ``categories``."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"mrcnn_coco: annotation json not found: {path}")
  try:
    with open(path, "rb") as f:
      raw = f.read()
    data = json.loads(raw)
  except json.JSONDecodeError as e:
    ends = " (the file ends early: truncated?)" if e.pos >= len(e.doc.rstrip()) else ""
    raise ValueError(f"mrcnn_coco: {path} is not valid JSON{ends}: {e}") from e
  except (ValueError, RecursionError) as e:
    # UnicodeDecodeError, integers of more than 4300 digits, nesting deeper
    # than the parser's recursion limit.
    raise ValueError(f"mrcnn_coco: {path} is not valid JSON: "
                     f"{type(e).__name__}: {str(e)[:200]}") from e
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


def categories(path: str, data: Mapping[str, Any]) -> list[tuple[int, str]]:
  """[(category id, name)] of a loaded json, sorted by id."""
  cats = {}
  for i, cat in enumerate(data["categories"]):
    _record(path, "categories", i, cat, ("id", "name"))
    if not _is_int(cat["id"]) or not _INT64[0] <= cat["id"] <= _INT64[1]:
      raise ValueError(f"mrcnn_coco: {path}: categories[{i}]['id'] must be a "
                       f"64-bit integer, got {cat['id']!r}")
    if cat["id"] in cats:
      raise ValueError(f"mrcnn_coco: {path}: category id {cat['id']} appears "
                       "more than once")
    cats[int(cat["id"])] = str(cat["name"])
  if not cats:
    raise ValueError(f"mrcnn_coco: {path}: 'categories' is empty")
  return sorted(cats.items())


def keypoint_categories(path: str, data: Mapping[str, Any]
                        ) -> tuple[list[str], list[list[int]]]:
  """(keypoint names, skeleton as 1-based index pairs) of the categories
  that list ``keypoints`` (COCO's person_keypoints jsons); ([], []) when
  none does. All such categories must list the same names."""
  found = None
  for i, cat in enumerate(data["categories"]):
    names = cat.get("keypoints") if isinstance(cat, dict) else None
    if names is None:
      continue
    skeleton = cat.get("skeleton", [])
    if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
        or not isinstance(skeleton, list)
        or not all(isinstance(p, list) and len(p) == 2 and all(
            _is_int(j) and 1 <= j <= len(names) for j in p) for p in skeleton)):
      raise ValueError(f"mrcnn_coco: {path}: categories[{i}] has malformed 'keypoints' "
                       "(a list of names) or 'skeleton' (pairs of 1-based keypoint "
                       "indices)")
    if found is not None and found[0] != names:
      raise ValueError(f"mrcnn_coco: {path}: categories list different 'keypoints' "
                       "names; one set of keypoints per dataset is supported")
    found = (names, [[int(j) for j in p] for p in skeleton])
  return found if found is not None else ([], [])


@dataclasses.dataclass
class ObjectRecord:
  """One annotation that passed the checks (original pixels)."""

  id: int
  label: int  # 0-based: categories sorted by id
  category_id: int
  is_crowd: bool
  box: tuple[float, float, float, float]  # clipped (x1, y1, x2, y2)
  area: float | None
  polygons: list[list[float]] | None  # or
  rle: dict[str, Any] | None  # compressed: {"size": [h, w], "counts": bytes}
  keypoints: list[float] | None = None  # [x, y, v] * K, original pixels


@dataclasses.dataclass
class ImageRecord:
  id: int
  file_name: str
  height: int
  width: int
  objects: list[ObjectRecord] = dataclasses.field(default_factory=list)


def _rle(where: str, counts, height: int, width: int) -> dict[str, Any]:
  """The compressed RLE of `counts` (a list, or pycocotools' string), checked
  to cover exactly height * width pixels."""
  size = [height, width]
  error = ValueError(
      f"{where}: RLE 'counts' is not a valid run-length encoding of {height} "
      f"x {width} = {height * width} pixels (uncompressed: a list of "
      "non-negative ints summing to height * width; compressed: the string "
      "pycocotools writes for such a list)")
  if isinstance(counts, list):
    if not all(_is_int(c) and c >= 0 for c in counts) or (
        sum(counts) != height * width):
      raise error
    return mask_utils.frPyObjects(
        {"size": size, "counts": [int(c) for c in counts]}, height, width)
  if isinstance(counts, str):
    try:
      counts = counts.encode("ascii")
    except UnicodeEncodeError:
      raise error from None
  # pycocotools' string alphabet is 48..111, the last character ending a
  # number (its reader runs past the end of the string otherwise).
  if (not isinstance(counts, bytes) or not counts
      or not all(48 <= c < 112 for c in counts) or counts[-1] - 48 >= 32):
    raise error
  rle = {"size": size, "counts": counts}
  # decode raises on runs past height * width; runs short of it leave pixels
  # undefined, which re-encoding the mask shows.
  try:
    canonical = mask_utils.encode(mask_utils.decode(rle))["counts"]
  except ValueError:
    raise error from None
  if canonical != counts:
    raise error
  return rle


def _check_polygon(where: str, poly: list, height: int, width: int) -> None:
  """Raises unless every vertex lies within one image size of the image.

  pycocotools rasterises a polygon by walking its whole outline at 5x
  resolution: a vertex a million pixels away costs a tenth of a second, one
  at 1e8 hangs it and one at 1e9 crashes the process (found by fuzzing).
  Such a vertex is a corrupt coordinate (COCO's lie within the image), so it
  is named instead of clipped (clipping would change pycocotools' mask, which
  evaluation uses)."""
  xs, ys = poly[0::2], poly[1::2]
  for axis, values, size in (("x", xs, width), ("y", ys, height)):
    lo, hi = min(values, default=0), max(values, default=0)
    if lo < -size or hi > 2 * size:
      bad = lo if lo < -size else hi
      raise ValueError(
          f"{where}: polygon {axis} coordinate {bad!r} lies more than one image "
          f"size outside the {height} x {width} (height x width) image "
          "(corrupt coordinates, or annotations of a differently sized image?)")


def _segmentation(path, ann, height, width, counters):
  """(polygons, compressed rle) of one annotation; raises on malformed input,
  returns (None, None) when no valid polygon is left (counted)."""
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
      _check_polygon(where, poly, height, width)
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
    return None, _rle(where, seg["counts"], height, width)
  raise ValueError(f"{where}: 'segmentation' must be a list of polygons or an "
                   f"RLE dict, got {type(seg).__name__}")


def _keypoints(where: str, ann, num_keypoints: int) -> list[float] | None:
  """An annotation's ``keypoints`` ([x, y, v] * K numbers, v in 0..2), or
  None (unlabelled) when it has none or num_keypoints is 0."""
  kp = ann.get("keypoints")
  if not num_keypoints or kp is None:
    return None
  if (not isinstance(kp, list) or len(kp) != 3 * num_keypoints
      or not all(_is_number(v) and math.isfinite(v) for v in kp)
      or not all(kp[i] in (0, 1, 2) for i in range(2, len(kp), 3))):
    raise ValueError(f"{where}: 'keypoints' must be {3 * num_keypoints} finite numbers "
                     f"[x1, y1, v1, ...] with v in 0, 1, 2 (the category lists "
                     f"{num_keypoints} keypoints), got {str(kp)[:80]}")
  return [float(v) for v in kp]


def read_split(path: str, data: Mapping[str, Any], category_ids: list[int],
               num_keypoints: int = 0) -> tuple[list[ImageRecord], dict[str, Any]]:
  """Checks one loaded json (`data`, read from `path`; labels index
  `category_ids`); returns its images (with their objects, in json order) and
  the counts of what was skipped. With ``num_keypoints`` K > 0 each
  object's ``keypoints`` are read too (see :func:`keypoint_categories`)."""
  label_of = {cid: i for i, cid in enumerate(category_ids)}
  max_pixels = max_image_pixels()
  images: dict[int, ImageRecord] = {}
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
    if max_pixels is not None and img["height"] * img["width"] > max_pixels:
      raise ValueError(
          f"mrcnn_coco: {path}: images[{i}] (id {iid}) is {img['height']} x "
          f"{img['width']} (height x width), more than {max_pixels} pixels "
          "(PIL's decompression-bomb limit, which the image reader enforces; "
          "raise PIL.Image.MAX_IMAGE_PIXELS to allow it)")
    if not isinstance(img["file_name"], str) or not img["file_name"]:
      raise ValueError(f"mrcnn_coco: {path}: images[{i}] (id {iid}) has "
                       f"'file_name' = {img['file_name']!r}")
    if iid in images:
      raise ValueError(f"mrcnn_coco: {path}: image id {iid} appears more than "
                       "once")
    images[int(iid)] = ImageRecord(int(iid), img["file_name"],
                                   int(img["height"]), int(img["width"]))

  counters = collections.defaultdict(list)
  unknown_categories = []
  seen_ids = set()
  for j, ann in enumerate(data["annotations"]):
    _record(path, "annotations", j, ann,
            ("id", "image_id", "category_id", "bbox", "segmentation"))
    aid = ann["id"]
    if not _is_int(aid) or not _INT64[0] <= aid <= _INT64[1]:
      raise ValueError(f"mrcnn_coco: {path}: annotations[{j}]['id'] must be a "
                       f"64-bit integer, got {aid!r}")
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
    image.objects.append(ObjectRecord(
        id=int(aid), label=label_of[ann["category_id"]],
        category_id=int(ann["category_id"]), is_crowd=bool(crowd),
        box=(x1, y1, x2, y2), area=None if area is None else float(area),
        polygons=polygons, rle=rle, keypoints=_keypoints(where, ann, num_keypoints)))
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


def log_skipped(split: str, stats: Mapping[str, Any]) -> None:
  """Logs what :func:`read_split` skipped (warnings) and counted (info)."""
  name = f"mrcnn_coco/{split}"
  n = stats["skipped_unknown_category"]
  if n:
    log.warning("%s: skipped %d annotations with unknown category ids: %s",
                name, n, _listed(stats["unknown_category_ids"]))
  messages = {
      "unknown_image": "with unknown image ids",
      "empty_box": "whose box lies outside the image or has zero or "
                   "negative width or height",
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


def check_image_files(path: str, images_dir: str,
                      images: list[ImageRecord]) -> None:
  """Raises FileNotFoundError naming the json (`path`), the folder and the
  first missing files if any of `images` is not in `images_dir`."""
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


def object_mask(obj: ObjectRecord, height: int, width: int) -> np.ndarray:
  """uint8 [height, width] 0/1 mask of `obj` (its polygons merged)."""
  if obj.polygons is not None:
    rle = mask_utils.merge(mask_utils.frPyObjects(obj.polygons, height, width))
  else:
    rle = obj.rle
  return mask_utils.decode(rle)
