"""From a config to iterators of static-shape numpy batches and COCO ground
truth. ``config.data.name`` picks the dataset:

* ``shapes``: the built-in synthetic dataset (``num_train``,
  ``num_validation``, ``dataset_seed``).
* ``coco``: COCO 2017, prepared from ``config.data.manual_dir`` (layout in
  ``coco.py``; once prepared into ``data_dir`` the manual dir is only needed
  for the ground-truth json, which is otherwise taken from where it was when
  the dataset was prepared).
* ``coco_format``: any COCO-format dataset: ``config.data.train_json``,
  ``train_images``, ``val_json``, ``val_images``.

Fields every dataset uses: ``data_dir`` (TFDS data dir; None = default),
``canvas`` (H, W) or ``canvases`` ((H, W) landscape, (H, W) portrait: one
canvas per batch, chosen by orientation), ``min_size`` (int, or a tuple drawn
from per training example; evaluation uses ``eval_min_size`` if set, else the
last value, as torchvision), ``max_size``, ``max_instances``,
``gt_mask_size``, ``flip_prob``, ``shuffle_buffer``. COCO only, optional:
``skip_empty_train`` (drop training images without a non-crowd object,
default True as in Detectron2).

``config.label_space`` (top level; ``config.data.label_space`` is read too):
"contiguous" (default) gives labels 1..K, categories sorted by id, mapped back
by :func:`label_to_category_id`; "coco_ids" makes labels the category ids
themselves (torchvision's 91-slot COCO models), with an identity map.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from mrcnn_jax.data import pipeline, shapes

DATASETS = ("shapes", "coco", "coco_format")


def _check(config):
  if config.data.name not in DATASETS:
    raise ValueError(f"config.data.name={config.data.name!r} is not a known dataset; "
                     f"expected one of {DATASETS}")


def _shapes_kwargs(config):
  d = config.data
  return dict(num_train=d.num_train, num_validation=d.num_validation, seed=d.dataset_seed)


def _coco_kwargs(config) -> dict[str, Any]:
  """The coco.load_coco / coco_builder keyword arguments naming the source."""
  d = config.data
  if d.name == "coco":
    return dict(manual_dir=d.get("manual_dir"))
  paths = {k: d.get(k) for k in ("train_json", "train_images", "val_json", "val_images")}
  if not any(paths.values()):
    raise ValueError("config.data.name='coco_format' needs config.data.train_json + "
                     "train_images and/or val_json + val_images")
  return paths


def _coco():
  from mrcnn_jax.data import coco  # pylint: disable=g-import-not-at-top
  return coco


def _label_space(config) -> str:
  return config.get("label_space") or config.data.get("label_space") or "contiguous"


def _coco_builder(config):
  return _coco().coco_builder(config.data.data_dir, **_coco_kwargs(config))


def class_names(config) -> list[str]:
  """Names indexed by label (0 = background)."""
  _check(config)
  if config.data.name == "shapes":
    return ["background"] + list(shapes.CLASS_NAMES)
  return ["background"] + _coco().coco_class_names(_coco_builder(config), _label_space(config))


def label_to_category_id(config) -> dict[int, int]:
  """{label 1..K: category id of the ground truth} for ``detections_to_coco``
  (identity for shapes)."""
  _check(config)
  if config.data.name == "shapes":
    return {i: i for i in range(1, len(shapes.CLASS_NAMES) + 1)}
  return _coco().coco_label_map(_coco_builder(config), _label_space(config))


def _pipeline(config, ds, *, train: bool, batch_dims: Sequence[int], skip_examples: int = 0,
              drop_remainder: bool = True):
  d = config.data
  canvases = d.get("canvases")
  if canvases is not None:
    canvas_kwargs = dict(canvases=tuple(tuple(c) for c in canvases))
  else:
    canvas_kwargs = dict(canvas=tuple(d.canvas))
  min_size = d.min_size
  if not train and d.get("eval_min_size"):
    min_size = d.eval_min_size  # else make_pipeline takes min_size's last value
  if not isinstance(min_size, int):
    min_size = tuple(min_size)
  return pipeline.make_pipeline(
      ds, train=train, batch_dims=tuple(batch_dims), **canvas_kwargs,
      min_size=min_size, max_size=d.max_size, max_instances=d.max_instances,
      gt_mask_size=d.gt_mask_size, flip_prob=d.flip_prob if train else 0.0,
      seed=config.seed, shuffle_buffer=d.shuffle_buffer, repeat=train,
      skip_examples=skip_examples, drop_remainder=drop_remainder)


def _load(config, split: str, train: bool):
  d = config.data
  if d.name == "shapes":
    return shapes.load_shapes(split, d.data_dir, decode=False, **_shapes_kwargs(config))
  skip_empty = train and d.get("skip_empty_train", True) is not False
  return _coco().load_coco(split, d.data_dir, decode=False, label_space=_label_space(config),
                           skip_empty=skip_empty, **_coco_kwargs(config))


def train_iterator(config, batch_dims: Sequence[int], skip_examples: int = 0) -> Iterator[dict]:
  """Endless, shuffled, flipped training batches [*batch_dims, ...];
  ``skip_examples`` resumes the deterministic stream."""
  _check(config)
  ds = _load(config, "train", train=True)
  return pipeline.numpy_batches(_pipeline(config, ds, train=True, batch_dims=batch_dims,
                                          skip_examples=skip_examples))


def eval_iterator(config, batch_dims: Sequence[int]) -> Iterator[dict]:
  """One pass over the validation split; the last batch (of each canvas) is
  padded with examples whose ``image_id`` is -1."""
  _check(config)
  ds = _load(config, "validation", train=False)
  return pipeline.numpy_batches(_pipeline(config, ds, train=False, batch_dims=batch_dims,
                                          drop_remainder=False))


def eval_coco_gt(config) -> dict | str:
  """The validation split's ground truth for pycocotools: a COCO dict for
  shapes (category ids equal the labels 1..K), the original json's path for
  COCO datasets (map labels with :func:`label_to_category_id`)."""
  _check(config)
  if config.data.name == "shapes":
    return shapes.shapes_coco_gt(config.data.data_dir, "validation", **_shapes_kwargs(config))
  return _coco().coco_gt_json("validation", config.data.data_dir, **_coco_kwargs(config))
