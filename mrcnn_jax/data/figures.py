"""The built-in synthetic keypoint dataset: stick figures whose joints are
the keypoints.

A TFDS builder, ``mrcnn_figures`` (version 1.0.0), drawn with numpy from a
seed like ``mrcnn_shapes`` (whose backgrounds, colours, sizes and builder
configs it shares): nothing is downloaded, the same seed gives the same
bytes, and it prepares in seconds. It is the dataset of
``experiments/keypoints_synthetic.py`` and of the keypoint tests.

Each example: an RGB image of 128 to 256 px per side on a noisy gradient
background with 1 to 4 stick figures (one class, ``figure``), each 48 to
140 px tall, standing roughly upright (torso tilted up to 25 degrees),
arms and legs bent at random. A figure is drawn as thick limbs and a round
head in one colour; figures drawn later occlude earlier ones. Its 13
keypoints (:data:`KEYPOINT_NAMES`) are the head centre and the joints;
"left" is the figure's own left, on the image's right as it faces the
viewer, so a horizontal flip swaps left and right (:data:`FLIP_MAP`).
Visibility follows COCO: 2 where the figure itself is painted at the
keypoint, 1 where a later figure covers it. A figure left with fewer than
60 visible pixels is dropped (counted in ``num_occluded``).

Features: those of ``mrcnn_shapes`` (``image``, ``image_id``,
``num_occluded``, ``objects/bbox``, ``objects/label`` (always 0),
``objects/mask``, ``objects/area``) plus ``objects/keypoints`` float32 [n,
13, 3] (x, y, v) in pixels (continuous coordinates: a pixel spans [j, j +
1]). :func:`figures_coco_gt` gives the validation ground truth in COCO's
person-keypoints format (``keypoints``, ``num_keypoints``, and the
category's ``keypoints`` names and ``skeleton``); OKS uses
:data:`KEYPOINT_SIGMAS`.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
import tensorflow as tf  # noqa: F401  (TFDS needs it imported)
import tensorflow_datasets as tfds

from mrcnn_jax.data import shapes, synthetic, tfds_util
from mrcnn_jax.data.shapes import (DEFAULT_NUM_TRAIN, DEFAULT_NUM_VALIDATION, DEFAULT_SEED,
                                   DrawParams, ShapesConfig, example_rng, shapes_config)
from mrcnn_jax.data.tfds_util import SourceFileCodePath, image_decoders

log = logging.getLogger(__name__)

CLASS_NAMES = ("figure",)
KEYPOINT_NAMES = (
    "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_hand", "right_hand", "left_hip", "right_hip", "left_knee", "right_knee",
    "left_foot", "right_foot")
# Pairs of 1-based keypoint indices joined by a limb (COCO's convention).
SKELETON = ((1, 2), (1, 3), (2, 3), (2, 4), (4, 6), (3, 5), (5, 7), (2, 8), (3, 9),
            (8, 9), (8, 10), (10, 12), (9, 11), (11, 13))
# OKS sigmas, COCO's values for the matching human joints (the head centre,
# which COCO lacks, gets 0.05).
KEYPOINT_SIGMAS = (0.05, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087,
                   0.087, 0.089, 0.089)


def flip_map(names) -> tuple[int, ...]:
  """Index permutation swapping ``left_*`` and ``right_*`` names (others map
  to themselves): keypoint i of a flipped figure is keypoint flip_map[i]."""
  names = list(names)
  out = []
  for n in names:
    if n.startswith("left_"):
      other = "right_" + n[5:]
    elif n.startswith("right_"):
      other = "left_" + n[6:]
    else:
      other = n
    out.append(names.index(other) if other in names else names.index(n))
  return tuple(out)


FLIP_MAP = flip_map(KEYPOINT_NAMES)
_MIN_VISIBLE = 60


def _pose(rng: np.random.Generator, height: float) -> np.ndarray:
  """13 keypoints (x, y) of a figure of this height, hips' centre at 0."""
  def unit(deg):  # direction from "down", positive angles to the figure's left (+x)
    r = np.deg2rad(deg)
    return np.array([np.sin(r), np.cos(r)])

  tilt = rng.uniform(-25, 25)
  up = -unit(tilt)
  side = np.array([-up[1], up[0]])  # the figure's left, +x when upright
  hips = np.zeros(2)
  shoulders = hips + up * 0.32 * height
  head = shoulders + up * 0.14 * height
  kp = {"head": head}
  for sign, name in ((1, "left"), (-1, "right")):
    sh = shoulders + sign * side * 0.10 * height
    hip = hips + sign * side * 0.07 * height
    arm = tilt + sign * rng.uniform(10, 150)
    elbow = sh + unit(arm) * 0.17 * height
    hand = elbow + unit(arm + sign * rng.uniform(-70, 70)) * 0.15 * height
    leg = tilt + sign * rng.uniform(0, 35)
    knee = hip + unit(leg) * 0.23 * height
    foot = knee + unit(leg - sign * rng.uniform(0, 45)) * 0.21 * height
    kp.update({f"{name}_shoulder": sh, f"{name}_elbow": elbow, f"{name}_hand": hand,
               f"{name}_hip": hip, f"{name}_knee": knee, f"{name}_foot": foot})
  return np.stack([kp[n] for n in KEYPOINT_NAMES])


def _segment_distance(px, py, a, b):
  ab = b - a
  t = np.clip(((px - a[0]) * ab[0] + (py - a[1]) * ab[1]) / max(ab @ ab, 1e-9), 0, 1)
  return np.hypot(px - (a[0] + t * ab[0]), py - (a[1] + t * ab[1]))


def _figure_pixels(points, thickness, head_radius, y0, y1, x0, x1):
  """bool [y1 - y0, x1 - x0]: pixel centres on a limb or in the head."""
  py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
  px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
  inside = np.hypot(px - points[0, 0], py - points[0, 1]) <= head_radius
  limbs = [(a - 1, b - 1) for a, b in SKELETON if a != 1]
  hips_mid = 0.5 * (points[7] + points[8])
  sh_mid = 0.5 * (points[1] + points[2])
  for a, b in limbs + [(-1, -2)]:
    pa, pb = (sh_mid, hips_mid) if a < 0 else (points[a], points[b])
    inside |= _segment_distance(px, py, pa, pb) <= thickness / 2
  return inside


def draw_example(rng: np.random.Generator, params: DrawParams = DrawParams()) -> dict[str, Any]:
  """One example: ``image`` uint8 [H, W, 3], ``masks`` bool [n, H, W],
  ``keypoints`` float32 [n, 13, 3], ``num_occluded``; n >= 1."""
  while True:
    h, w = (int(v) for v in rng.integers(params.min_image_size, params.max_image_size + 1,
                                         size=2))
    image = shapes._background(rng, h, w, params)  # pylint: disable=protected-access
    bg_mean = image.reshape(-1, 3).mean(axis=0)
    owner = np.zeros((h, w), np.int16)
    figures = []
    for i in range(int(rng.integers(1, 5))):
      height = rng.uniform(48, min(140, 0.95 * h))
      pts = _pose(rng, height)
      thickness = max(3.0, 0.07 * height)
      head_r = 0.075 * height
      margin = max(thickness, head_r) + 1
      lo, hi = pts.min(axis=0) - margin, pts.max(axis=0) + margin
      if hi[0] - lo[0] > w or hi[1] - lo[1] > h:
        continue
      pts = pts + np.array([rng.uniform(-lo[0], w - hi[0]), rng.uniform(-lo[1], h - hi[1])])
      colour = shapes._random_colour(rng)  # pylint: disable=protected-access
      for _ in range(8):
        if np.abs(colour - bg_mean).mean() > 40.0:
          break
        colour = shapes._random_colour(rng)  # pylint: disable=protected-access
      x0, y0 = (max(int(np.floor(v - margin)), 0) for v in pts.min(axis=0))
      x1 = min(int(np.ceil(pts[:, 0].max() + margin)), w)
      y1 = min(int(np.ceil(pts[:, 1].max() + margin)), h)
      inside = _figure_pixels(pts, thickness, head_r, y0, y1, x0, x1)
      image[y0:y1, x0:x1][inside] = colour
      owner[y0:y1, x0:x1][inside] = i + 1
      figures.append((i + 1, pts))
    if not figures:
      continue
    noise_std = rng.uniform(2.0, 10.0)
    image = image + noise_std * rng.standard_normal((h, w, 3), dtype=np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    masks, keypoints, occluded = [], [], 0
    for fid, pts in figures:
      visible = owner == fid
      if int(visible.sum()) < _MIN_VISIBLE:
        occluded += 1
        continue
      ix = np.clip(pts[:, 0].astype(int), 0, w - 1)
      iy = np.clip(pts[:, 1].astype(int), 0, h - 1)
      v = np.where(owner[iy, ix] == fid, 2.0, 1.0)
      masks.append(visible)
      keypoints.append(np.concatenate([pts, v[:, None]], axis=1).astype(np.float32))
    if masks:
      return {"image": image, "masks": np.stack(masks), "keypoints": np.stack(keypoints),
              "num_occluded": occluded}


def _encoded_example(seed: int, split: str, index: int) -> dict[str, Any]:
  """Example ``index`` of ``split`` as the builder stores it
  (``synthetic.encode_example``; label 0 and the keypoints of each figure)."""
  ex = draw_example(example_rng(seed, split, index))
  return synthetic.encode_example(ex, index,
                                  [{"label": 0, "keypoints": kp} for kp in ex["keypoints"]])


class MrcnnFigures(SourceFileCodePath, tfds.core.GeneratorBasedBuilder):
  """Synthetic stick figures with 13 keypoints, boxes and instance masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [shapes_config()]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[1],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8,
                                         encoding_format="png"),
            "image_id": tfds.features.Scalar(dtype=np.int64),
            "num_occluded": tfds.features.Scalar(dtype=np.int64),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                "mask": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
                                            encoding_format="png"),
                "area": tfds.features.Scalar(dtype=np.int64),
                "keypoints": tfds.features.Tensor(shape=(len(KEYPOINT_NAMES), 3),
                                                  dtype=np.float32),
            }),
        }),
        supervised_keys=None)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {"train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation)}

  def _generate_examples(self, split: str, num_examples: int):
    total = 0
    # Drawn and encoded on every core, in index order (synthetic.generate).
    make = functools.partial(_encoded_example, self.builder_config.seed, split)
    for index, ex in enumerate(synthetic.generate(make, num_examples)):
      total += ex["num_occluded"]
      yield index, tfds_util.with_bboxes(ex)
    log.info("mrcnn_figures/%s: %d examples; dropped %d figures under %d visible pixels",
             split, num_examples, total, _MIN_VISIBLE)


def figures_builder(data_dir=None, *, num_train: int = DEFAULT_NUM_TRAIN,
                    num_validation: int = DEFAULT_NUM_VALIDATION, seed: int = DEFAULT_SEED,
                    prepare: bool = True) -> MrcnnFigures:
  """The ``mrcnn_figures`` builder, prepared into `data_dir` unless it is."""
  builder = MrcnnFigures(data_dir=None if data_dir is None else os.fspath(data_dir),
                         config=shapes_config(num_train, num_validation, seed))
  if prepare:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def load_figures(split: str = "train", data_dir=None, *, decode: bool = True,
                 **config_kwargs) -> tf.data.Dataset:
  """The examples of `split` as tf.data (prepared on first use), in the
  pipeline's input layout; ``decode`` as ``shapes.load_shapes``."""
  if split not in ("train", "validation"):
    raise ValueError(f"load_figures: unknown split {split!r}; expected 'train' or "
                     "'validation'")
  return figures_builder(data_dir, **config_kwargs).as_dataset(
      split=split, decoders=image_decoders(decode))


def figures_coco_gt(data_dir=None, split: str = "validation", **config_kwargs) -> dict:
  """The ground truth of `split` as a COCO person-keypoints dict: as
  ``shapes.shapes_coco_gt`` plus ``keypoints`` [x, y, v] * 13 and
  ``num_keypoints`` per annotation, and the category's ``keypoints`` names
  and ``skeleton``."""
  builder = figures_builder(data_dir, **config_kwargs)
  images, annotations = [], []
  for ex in sorted(shapes._iter_numpy(builder, split),  # pylint: disable=protected-access
                   key=lambda e: e["image_id"]):
    image_id = int(ex["image_id"])
    h, w = shapes._png_size(ex["image"])  # pylint: disable=protected-access
    images.append({"id": image_id, "height": h, "width": w,
                   "file_name": f"{split}/{image_id:06d}.png"})
    for mask, kp in zip(ex["objects"]["mask"][..., 0] > 0, ex["objects"]["keypoints"]):
      y0, x0, y1, x1 = shapes._tight_box(mask)  # pylint: disable=protected-access
      rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
      rle["counts"] = rle["counts"].decode("ascii")
      annotations.append({
          "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
          "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
          "area": float(mask.sum()), "iscrowd": 0, "segmentation": rle,
          "keypoints": [float(v) for v in np.asarray(kp, np.float64).reshape(-1)],
          "num_keypoints": int((kp[:, 2] > 0).sum())})
  return {
      "info": {"description": f"mrcnn_figures/{builder.builder_config.name} {split}"},
      "images": images, "annotations": annotations,
      "categories": [{"id": 1, "name": "figure", "supercategory": "figure",
                      "keypoints": list(KEYPOINT_NAMES),
                      "skeleton": [list(p) for p in SKELETON]}],
  }
