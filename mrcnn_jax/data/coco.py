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
  image folder per split (:func:`coco_config`; either split may be left
  out, e.g. to evaluate on a validation set alone). The name is a hash of the
  absolute paths, so each dataset gets its own directory in ``data_dir``; to
  rebuild after editing a json in place, delete that directory (a changed
  json is detected by size and mtime and logged as a warning).

Usage (a :class:`~mrcnn_jax.data.coco_json.CocoSource` names the files)::

    source = CocoSource(manual_dir="/data/coco")   # or
    source = CocoSource(train_json=..., train_images=..., val_json=...,
                        val_images=...)
    builder = coco_builder(data_dir, source)       # prepares on first use
    ds = load_coco(builder, "train")               # pipeline input
    coco_label_map(builder)    # {1: 1, 2: 2, ..., 80: 90}  (label -> category)
    coco_class_names(builder)  # ["person", "bicycle", ...]  (0-based)
    coco_gt_json(builder, "validation", source)    # for COCOeval

Reading and checking the jsons is ``coco_json.py`` (plain Python); this
module holds the TFDS builder, image encoding and loading.

Features of one example (one image):

=====================  =========================================================
``image``              the image file's own bytes when it is a JPEG or PNG, else
                       (BMP, GIF, TIFF, WebP, ...) re-encoded at build time as
                       an RGB PNG by ``mrcnn_jax.image_io`` (predict's rule).
                       Decoded (by TFDS with ``decode=True``, or by the
                       pipeline) with ``decode_image(channels=3)``, which
                       turns grayscale, palette, CMYK and 16-bit images into
                       RGB (16-bit: the high byte) and drops an alpha channel
                       (not composited). EXIF orientation is ignored:
                       annotations refer to the pixels as stored, as in the
                       COCO json.
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
``keypoints``          float32 [n * 3K], every object's ``keypoints`` (x, y, v)
                       in original pixels, flattened (0 where an annotation has
                       none); K from the categories' ``keypoints`` names (0 for
                       instance jsons). :func:`load_coco` gives them as
                       ``objects/keypoints`` [n, 3K]
=====================  =========================================================

The class names and category ids (sorted by id) are stored in the dataset's
metadata (:func:`coco_class_names`, :func:`coco_label_map`; keypoint names
and skeleton: :func:`coco_keypoint_info`) together with
per-split counts of what was skipped (:func:`coco_split_stats`).

Bad input is found at build time, in Python (preparation is the one-time
step; the tf.data hot path then only sees data that decodes). README.md's
"Bad input" has the whole table with the messages; in short:

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
corrupt / truncated / empty      ``ValueError`` naming the file and image id
image, or size differing from    (checked by decoding it with TensorFlow's own
the json, or larger than PIL's   decoder, as the pipeline will)
decompression-bomb limit
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
finite coordinates, a vertex     ``height * width`` pixels, ...
more than one image size
outside the image, bad RLE)
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
import os
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from PIL import Image as PILImage
import tensorflow as tf
import tensorflow_datasets as tfds

from mrcnn_jax import image_io
from mrcnn_jax.data import hide_accelerators_from_tf
from mrcnn_jax.data import coco_json
from mrcnn_jax.data.coco_json import (CocoSource, LABEL_SPACES,
                                      MANUAL_DOWNLOAD_INSTRUCTIONS, SPLITS)
from mrcnn_jax.data.tfds_util import (SourceFileCodePath, image_decoders,
                                      png_bytes)

hide_accelerators_from_tf()

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------
# Builder configs.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class CocoConfig(tfds.core.BuilderConfig):
  """A ``mrcnn_coco`` variant: ``coco2017`` (no source: the manual directory
  comes with the download config) or a custom one naming its files."""

  source: CocoSource | None = None


COCO2017 = CocoConfig(
    name="coco2017",
    description="COCO 2017 train/val instances from a manual directory.")


def coco_config(source: CocoSource) -> CocoConfig:
  """The builder config of `source`: :data:`COCO2017`, or for a COCO-format
  dataset ``custom_<12 hex digits>``, a hash of its absolute paths."""
  if source.is_coco2017:
    return COCO2017
  paths = {k: v for k, v in dataclasses.asdict(source).items()
           if v is not None}
  digest = hashlib.sha1(
      json.dumps(paths, sort_keys=True).encode("utf-8")).hexdigest()[:12]
  return CocoConfig(
      name=f"custom_{digest}",
      description="COCO-format dataset: " + ", ".join(
          f"{k}={v}" for k, v in sorted(paths.items())),
      source=source)


# ------------------------------------------------------------------------------
# Encoding one image (Python, build time).
# ------------------------------------------------------------------------------


def _image_bytes(file_path: str,
                 image: coco_json.ImageRecord) -> tuple[bytes, bool]:
  """(bytes to store, whether they were re-encoded); raises ValueError naming
  the file if it does not decode to the json's size."""
  where = f"mrcnn_coco: image {file_path} (image id {image.id})"
  with open(file_path, "rb") as f:
    data = f.read()
  if not data:
    raise ValueError(f"{where} is empty (0 bytes)")
  try:
    with PILImage.open(io.BytesIO(data)) as pil:
      fmt = pil.format
      if fmt not in ("JPEG", "PNG"):
        pil.load()
        data = png_bytes(image_io.to_rgb(pil, where))  # predict's rule
  except ValueError as e:
    if where in str(e):
      raise
    raise ValueError(f"{where} cannot be read as an image: {e}") from e
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


def _object_feature(obj: coco_json.ObjectRecord, height: int,
                    width: int) -> dict[str, Any]:
  mask = coco_json.object_mask(obj, height, width)
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
      "area": obj.area if obj.area is not None else float(mask.sum()),
  }


def _encode_image(images_dir: str, image: coco_json.ImageRecord,
                  num_keypoints: int = 0) -> tuple[dict, bool]:
  data, reencoded = _image_bytes(os.path.join(images_dir, image.file_name),
                                 image)
  keypoints = np.zeros((len(image.objects), 3 * num_keypoints), np.float32)
  for i, o in enumerate(image.objects):
    if o.keypoints is not None:
      keypoints[i] = o.keypoints
  return {
      "keypoints": keypoints.reshape(-1),
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

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Keypoints (COCO person-keypoints jsons) and their names."}
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
            "keypoints": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        }),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(),
    )

  def _sources(self, dl_manager) -> dict[str, tuple[str, str]]:
    cfg = self.builder_config
    if cfg.source is not None:
      return cfg.source.splits()
    source = CocoSource(manual_dir=os.fspath(dl_manager.manual_dir))
    source.check_manual_dir()
    return source.splits()

  def _split_generators(self, dl_manager):
    sources = self._sources(dl_manager)
    categories, source_of_categories = None, None
    metadata = self.info.metadata
    metadata["splits"] = {}
    generators = {}
    for split, (json_path, images_dir) in sources.items():
      data = coco_json.load_json(json_path)
      cats = coco_json.categories(json_path, data)
      if categories is None:
        categories, source_of_categories = cats, json_path
        metadata["class_names"] = [name for _, name in categories]
        metadata["category_ids"] = [cid for cid, _ in categories]
        names, skeleton = coco_json.keypoint_categories(json_path, data)
        metadata["keypoint_names"], metadata["keypoint_skeleton"] = names, skeleton
      elif cats != categories:
        raise ValueError(
            f"mrcnn_coco: the categories of {json_path} differ from those of "
            f"{source_of_categories}; both splits need the same (id, name) "
            "list")
      images, stats = coco_json.read_split(json_path, data,
                                           metadata["category_ids"],
                                           len(metadata["keypoint_names"]))
      del data  # the images keep what they need
      coco_json.check_image_files(json_path, images_dir, images)
      coco_json.log_skipped(split, stats)
      stats.update(json=json_path, images=images_dir,
                   json_fingerprint=_source_fingerprint(json_path))
      metadata["splits"][split] = stats
      generators[split] = self._generate_examples(
          split, images_dir, images, stats, len(metadata["keypoint_names"]))
    return generators

  def _generate_examples(self, split, images_dir, images, stats,
                         num_keypoints=0):
    workers = min(8, os.cpu_count() or 1)
    encode = lambda im: (im.id, _encode_image(images_dir, im, num_keypoints))
    reencoded = 0
    for image_id, (example, was_reencoded) in _imap_ordered(encode, images,
                                                            workers):
      reencoded += was_reencoded
      yield image_id, example
    stats["num_reencoded_images"] = reencoded
    if reencoded:
      log.info("mrcnn_coco/%s: re-encoded %d images that were neither JPEG "
               "nor PNG as RGB PNG", split, reencoded)


# ------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------


def coco_builder(data_dir: str | os.PathLike | None = None,
                 source: CocoSource = CocoSource(), *,
                 prepare: bool = True) -> MrcnnCoco:
  """The ``mrcnn_coco`` builder of `source`, prepared into `data_dir` unless
  it is.

  COCO 2017: a source with ``manual_dir`` the first time; once prepared,
  ``coco_builder(data_dir)`` finds it. A COCO-format dataset: its paths, every
  time (they name the config). `data_dir` None means TFDS's default. Nothing
  is downloaded.
  """
  config = coco_config(source)
  builder = MrcnnCoco(
      data_dir=None if data_dir is None else os.fspath(data_dir),
      config=config)
  if prepare and not builder.is_prepared():
    if config is COCO2017:
      if source.manual_dir is None:
        raise FileNotFoundError(
            f"mrcnn_coco/coco2017 is not prepared in {builder.data_dir}; pass "
            "manual_dir (scripts/prepare_coco.py --manual_dir ...).\n"
            + MANUAL_DOWNLOAD_INSTRUCTIONS)
      source.check_manual_dir()  # clear error before TFDS's
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=source.manual_dir,
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


def _label_space(label_space: str) -> str:
  if label_space not in LABEL_SPACES:
    raise ValueError(f"mrcnn_coco: label_space must be one of {LABEL_SPACES}, "
                     f"got {label_space!r}")
  return label_space


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


def coco_keypoint_info(builder: MrcnnCoco) -> dict[str, Any]:
  """``keypoint_names`` and ``keypoint_skeleton`` (1-based index pairs) of
  the dataset's categories; {} for a dataset without keypoints."""
  meta = _metadata(builder)
  names = list(meta.get("keypoint_names") or [])
  if not names:
    return {}
  return {"keypoint_names": tuple(names),
          "keypoint_skeleton": tuple(tuple(p) for p in meta.get("keypoint_skeleton", []))}


def coco_split_stats(builder: MrcnnCoco, split: str) -> dict[str, Any]:
  """What preparing `split` found: image / object counts and the skipped
  annotations by reason (``skipped_*``), with up to 20 of their ids."""
  splits = _metadata(builder)["splits"]
  if split not in splits:
    raise ValueError(f"mrcnn_coco: split {split!r} is not in this dataset "
                     f"(has {sorted(splits)})")
  return dict(splits[split])


def load_coco(builder: MrcnnCoco,
              split: str = "train", *,
              decode: bool = False,
              label_space: str = "contiguous",
              skip_empty: bool = False,
              shuffle_files: bool = False,
              read_config: tfds.ReadConfig | None = None) -> tf.data.Dataset:
  """The examples of `split` ("train" / "validation") of a prepared
  `builder` (:func:`coco_builder`) in the pipeline's input layout (see
  ``pipeline``), plus ``objects/is_crowd`` and the extra fields of the module
  docstring.

  With `decode` False (the default), ``image`` and ``objects/mask`` stay
  encoded bytes and the pipeline decodes them after shuffling.
  ``label_space="coco_ids"`` makes ``objects/label`` the category id - 1 (so
  pipeline labels equal COCO category ids, as torchvision's 91-class models
  expect). `skip_empty` drops images without a non-crowd object (Detectron2
  does so for training; the count is in :func:`coco_split_stats` as
  ``num_images_without_non_crowd_objects`` and is logged here). TF ops only.
  """
  if split not in builder.info.splits:
    raise ValueError(f"mrcnn_coco: unknown split {split!r}; this dataset has "
                     f"{sorted(builder.info.splits)}")
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_files,
                          read_config=read_config,
                          decoders=image_decoders(decode))
  num_keypoints = len(coco_keypoint_info(builder).get("keypoint_names", ()))

  def keypoints_per_object(example):
    example = dict(example)
    flat = example.pop("keypoints")
    objects = dict(example["objects"])
    if num_keypoints:
      objects["keypoints"] = tf.reshape(flat, [-1, 3 * num_keypoints])
    return dict(example, objects=objects)

  ds = ds.map(keypoints_per_object, num_parallel_calls=tf.data.AUTOTUNE)
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


def coco_gt_json(builder: MrcnnCoco, split: str = "validation",
                 source: CocoSource | None = None) -> str:
  """Path of `split`'s original annotation json, the ground truth for
  pycocotools (image and category ids are those of the prepared dataset):
  where `source` names it (COCO 2017: under its manual_dir), else where it
  was when the dataset was prepared."""
  if split not in SPLITS:
    raise ValueError(f"mrcnn_coco: unknown split {split!r}; expected one of "
                     f"{SPLITS}")
  named = (source.splits() if source is not None else {}).get(split)
  path = named[0] if named else coco_split_stats(builder, split)["json"]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"mrcnn_coco: ground-truth json {path} of split "
                            f"{split!r} not found")
  return path
