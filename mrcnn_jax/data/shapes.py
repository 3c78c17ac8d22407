"""The built-in synthetic "shapes" instance-segmentation dataset.

A TFDS builder, ``mrcnn_shapes`` (version 1.0.0), that draws its examples
with numpy from a seed: nothing is downloaded, and the same seed always gives
the same bytes. It is small enough to prepare in seconds and hard enough that
a detector has to learn boxes, classes and masks, which makes it the dataset
for smoke tests, tutorials and end-to-end checks of training and evaluation.

Each example:

* ``image``: RGB uint8, height and width drawn independently from
  [128, 256]. The background is a random colour gradient plus gaussian
  noise, sometimes with stripes.
* 1 to 6 objects, each a ``square``, ``circle`` or ``triangle``
  (:data:`CLASS_NAMES`) of random size (16 to 96 px), colour and position,
  fully inside the image. Objects are painted in order, so later ones occlude
  earlier ones; each instance mask is the part that stays visible, so masks
  of one image are disjoint. An object left with fewer than 30 visible pixels
  is dropped from the annotations (its few pixels stay in the image); the
  per-example count is stored in ``num_occluded`` and the per-split total is
  logged. Every example keeps at least one object, so no mask is empty.

Features (as TFDS decodes them):

=====================  =========================================================
``image``              uint8 [H, W, 3] (PNG)
``image_id``           int64, 1..N within each split
``num_occluded``       int64, objects dropped for too small a visible area
``objects/bbox``       float32 [n, 4], TFDS ``BBox``: normalised
                       ``(ymin, xmin, ymax, xmax)``; the tight box of the
                       visible mask in continuous pixel coordinates, i.e.
                       pixel rows r0..r1 give ymin = r0 / H, ymax = (r1 + 1) / H
``objects/label``      int64 [n], 0-based index into :data:`CLASS_NAMES`
                       (the pipeline adds 1; 0 is background there)
``objects/mask``       uint8 [n, H, W, 1], values 0/1 (one PNG per instance)
``objects/area``       int64 [n], visible pixels of the mask
=====================  =========================================================

Splits ``train`` (2000 examples) and ``validation`` (200) by default; other
sizes and seeds get their own builder config (see :func:`shapes_config`), so
tests can prepare a tiny copy in a temporary directory::

    ds = load_shapes("train", data_dir, num_train=8, num_validation=4)
    gt = shapes_coco_gt(data_dir, "validation", num_train=8, num_validation=4)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
from typing import Any, Iterator

import numpy as np
from pycocotools import mask as mask_utils
import tensorflow as tf
import tensorflow_datasets as tfds

from mrcnn_jax.data import hide_accelerators_from_tf
from mrcnn_jax.data import synthetic, tfds_util
# The drawing lives in ``synthetic`` (numpy and PIL only, shared with the
# figures dataset); its names stay importable from here.
from mrcnn_jax.data.synthetic import (  # noqa: F401  pylint: disable=unused-import
    _SPLIT_CODES, CLASS_NAMES, DrawParams, _background, _random_colour, _shape_inside,
    _tight_box, draw_example, example_rng, png_bytes)
from mrcnn_jax.data.tfds_util import (DecodeSequenceImages, KeepEncoded,
                                      SourceFileCodePath, image_decoders)

hide_accelerators_from_tf()

DEFAULT_NUM_TRAIN = 2000
DEFAULT_NUM_VALIDATION = 200
DEFAULT_SEED = 0

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------
# TFDS builder.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Sizes and seed of a ``mrcnn_shapes`` variant; see :func:`shapes_config`."""

  num_train: int = DEFAULT_NUM_TRAIN
  num_validation: int = DEFAULT_NUM_VALIDATION
  seed: int = DEFAULT_SEED


_DEFAULT_CONFIG = ShapesConfig(
    name="default",
    description=(f"{DEFAULT_NUM_TRAIN} train / {DEFAULT_NUM_VALIDATION} "
                 f"validation examples, seed {DEFAULT_SEED}."))


def shapes_config(num_train: int = DEFAULT_NUM_TRAIN,
                  num_validation: int = DEFAULT_NUM_VALIDATION,
                  seed: int = DEFAULT_SEED) -> ShapesConfig:
  """The builder config for these sizes and seed.

  The defaults return the registered ``default`` config; anything else gets a
  config named ``train{N}_val{M}_seed{S}`` (its own directory in data_dir).
  """
  for name, value in (("num_train", num_train),
                      ("num_validation", num_validation), ("seed", seed)):
    if int(value) != value or value < 0:
      raise ValueError(f"shapes_config: {name} must be an integer >= 0, "
                       f"got {value!r}")
  if (num_train, num_validation, seed) == (
      DEFAULT_NUM_TRAIN, DEFAULT_NUM_VALIDATION, DEFAULT_SEED):
    return _DEFAULT_CONFIG
  return ShapesConfig(
      name=f"train{num_train}_val{num_validation}_seed{seed}",
      description=(f"{num_train} train / {num_validation} validation "
                   f"examples, seed {seed}."),
      num_train=int(num_train), num_validation=int(num_validation),
      seed=int(seed))


class MrcnnShapes(SourceFileCodePath, tfds.core.GeneratorBasedBuilder):
  """Synthetic squares, circles and triangles with instance masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [_DEFAULT_CONFIG]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[1],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(None, None, 3), dtype=np.uint8, encoding_format="png"),
            "image_id": tfds.features.Scalar(dtype=np.int64),
            "num_occluded": tfds.features.Scalar(dtype=np.int64),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                "mask": tfds.features.Image(
                    shape=(None, None, 1), dtype=np.uint8,
                    encoding_format="png"),
                "area": tfds.features.Scalar(dtype=np.int64),
            }),
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {
        "train": self._generate_examples("train", cfg.num_train),
        "validation": self._generate_examples("validation", cfg.num_validation),
    }

  def _generate_examples(self, split: str, num_examples: int):
    # Drawn and PNG-encoded by one worker process per core (in order, the
    # same bytes as drawing them here: each example has its own generator).
    total_occluded = 0
    for index, ex in enumerate(synthetic.shapes_examples(self.builder_config.seed, split,
                                                         num_examples)):
      total_occluded += ex["num_occluded"]
      yield index, tfds_util.with_bboxes(ex)
    log.info("mrcnn_shapes/%s: %d examples; dropped %d objects whose visible "
             "area fell under the minimum.", split, num_examples,
             total_occluded)


# ------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------


def shapes_builder(data_dir: str | os.PathLike | None = None, *,
                   num_train: int = DEFAULT_NUM_TRAIN,
                   num_validation: int = DEFAULT_NUM_VALIDATION,
                   seed: int = DEFAULT_SEED,
                   prepare: bool = True) -> MrcnnShapes:
  """The ``mrcnn_shapes`` builder, prepared into `data_dir` unless it is.

  `data_dir` None means TFDS's default (``~/tensorflow_datasets`` or
  ``$TFDS_DATA_DIR``). Preparation downloads nothing.
  """
  builder = MrcnnShapes(
      data_dir=None if data_dir is None else os.fspath(data_dir),
      config=shapes_config(num_train, num_validation, seed))
  if prepare:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            try_download_gcs=False,
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def load_shapes(split: str = "train",
                data_dir: str | os.PathLike | None = None, *,
                num_train: int = DEFAULT_NUM_TRAIN,
                num_validation: int = DEFAULT_NUM_VALIDATION,
                seed: int = DEFAULT_SEED,
                decode: bool = True,
                shuffle_files: bool = False,
                read_config: tfds.ReadConfig | None = None) -> tf.data.Dataset:
  """The examples of `split` ("train" or "validation") as tf.data.

  Prepares the dataset into `data_dir` on first use (seconds). With
  `decode` False, ``image`` and ``objects/mask`` stay PNG bytes (tf.string);
  the pipeline decodes them after shuffling, which keeps its shuffle buffer
  small. The stream is in a fixed order unless `shuffle_files`; shuffle in
  the pipeline instead.
  """
  if split not in _SPLIT_CODES:
    raise ValueError(f"load_shapes: unknown split {split!r}; expected one of "
                     f"{sorted(_SPLIT_CODES)}")
  builder = shapes_builder(data_dir, num_train=num_train,
                           num_validation=num_validation, seed=seed)
  return builder.as_dataset(split=split, shuffle_files=shuffle_files,
                            read_config=read_config,
                            decoders=image_decoders(decode))


def _png_size(data: bytes) -> tuple[int, int]:
  """(height, width) from a PNG's IHDR chunk, without decoding it."""
  if data[:8] != b"\x89PNG\r\n\x1a\n":
    raise ValueError("mrcnn_shapes: 'image' is not a PNG")
  width, height = struct.unpack(">II", data[16:24])
  return int(height), int(width)


def _iter_numpy(builder: MrcnnShapes, split: str) -> Iterator[dict[str, Any]]:
  ds = builder.as_dataset(split=split, decoders={
      "image": KeepEncoded(), "objects": {"mask": DecodeSequenceImages()}})
  yield from tfds.as_numpy(ds)


def shapes_coco_gt(data_dir: str | os.PathLike | None = None,
                   split: str = "validation", *,
                   num_train: int = DEFAULT_NUM_TRAIN,
                   num_validation: int = DEFAULT_NUM_VALIDATION,
                   seed: int = DEFAULT_SEED) -> dict[str, Any]:
  """The ground truth of `split` as a COCO-format dict (for pycocotools).

  ``images``: id (= image_id), height, width, file_name; ``annotations``: id
  (1..), image_id, category_id (1..3, CLASS_NAMES order), bbox ``[x, y, w, h]``
  in original pixels (the tight box of the mask), area (mask pixels),
  iscrowd 0, segmentation as compressed RLE with ``counts`` a str;
  ``categories``: id, name, supercategory. Prepares the dataset if needed.
  """
  if split not in _SPLIT_CODES:
    raise ValueError(f"shapes_coco_gt: unknown split {split!r}; expected one "
                     f"of {sorted(_SPLIT_CODES)}")
  builder = shapes_builder(data_dir, num_train=num_train,
                           num_validation=num_validation, seed=seed)
  images, annotations = [], []
  for ex in sorted(_iter_numpy(builder, split), key=lambda e: e["image_id"]):
    image_id = int(ex["image_id"])
    h, w = _png_size(ex["image"])
    masks = ex["objects"]["mask"][..., 0] > 0  # [n, H, W]
    images.append({"id": image_id, "height": int(h), "width": int(w),
                   "file_name": f"{split}/{image_id:06d}.png"})
    for mask, label in zip(masks, ex["objects"]["label"]):
      y0, x0, y1, x1 = _tight_box(mask)
      rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
      rle["counts"] = rle["counts"].decode("ascii")
      annotations.append({
          "id": len(annotations) + 1,
          "image_id": image_id,
          "category_id": int(label) + 1,
          "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
          "area": float(mask.sum()),
          "iscrowd": 0,
          "segmentation": rle,
      })
  return {
      "info": {"description": f"mrcnn_shapes/{builder.builder_config.name} "
                              f"{builder.version} {split}"},
      "images": images,
      "annotations": annotations,
      "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                     for i, name in enumerate(CLASS_NAMES)],
  }


def write_coco_gt(path: str | os.PathLike,
                  data_dir: str | os.PathLike | None = None,
                  split: str = "validation", **config_kwargs) -> str:
  """Writes :func:`shapes_coco_gt` as JSON to `path`; returns the path."""
  gt = shapes_coco_gt(data_dir, split, **config_kwargs)
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(gt, f)
  return path


def write_coco_format(root: str | os.PathLike, num_images: int = 8, *,
                      split: str = "train", seed: int = DEFAULT_SEED,
                      params: DrawParams = DrawParams(),
                      extras: bool = True) -> tuple[str, str]:
  """Writes ``num_images`` drawn examples as a COCO-format dataset: PNGs in
  ``<root>/images/`` and ``<root>/annotations.json`` (compressed-RLE masks,
  category ids 1..3 in CLASS_NAMES order, boxes the masks' tight boxes). A
  stand-in for one's own data in the notebooks and docs.

  With ``extras`` it also holds what the input leaves out, to show how: a
  crowd region on the first image (kept for evaluation, never ground truth),
  an annotation with a zero-area box on the second and one with an unknown
  category id on the third (both skipped and counted when the dataset is
  prepared). Returns (json path, images dir).
  """
  root = os.fspath(root)
  images_dir = os.path.join(root, "images")
  os.makedirs(images_dir, exist_ok=True)
  images, annotations = [], []

  def annotate(image_id, category_id, mask, crowd=0, bbox=None):
    y0, x0, y1, x1 = _tight_box(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    annotations.append({
        "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
        "bbox": bbox or [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float(mask.sum()), "iscrowd": crowd,
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}})

  for i in range(num_images):
    ex = draw_example(example_rng(seed, split, i), params)
    image_id = i + 1
    h, w = ex["image"].shape[:2]
    name = f"{image_id:06d}.png"
    with open(os.path.join(images_dir, name), "wb") as f:
      f.write(png_bytes(ex["image"]))
    images.append({"id": image_id, "file_name": name, "height": int(h), "width": int(w)})
    for mask, label in zip(ex["masks"], ex["labels"]):
      annotate(image_id, int(label) + 1, mask)
    if extras and i < 3:
      region = np.zeros((h, w), bool)
      region[: h // 4, : w // 4] = True
      if i == 0:
        annotate(image_id, 1, region, crowd=1)
      elif i == 1:
        annotate(image_id, 2, region, bbox=[5.0, 5.0, 0.0, 10.0])
      else:
        annotate(image_id, 1, region)
        annotations[-1]["category_id"] = 99
  path = os.path.join(root, "annotations.json")
  with open(path, "w") as f:
    json.dump({"images": images, "annotations": annotations,
               "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                              for i, n in enumerate(CLASS_NAMES)]}, f)
  return path, images_dir
