"""From a config to iterators of static-shape numpy batches and COCO ground
truth. ``config.data.name`` picks the dataset:

* ``shapes``: the built-in synthetic dataset (``num_train``,
  ``num_validation``, ``dataset_seed``).
* ``figures``: the built-in synthetic keypoint dataset (stick figures,
  ``figures.py``), the same fields as ``shapes``.
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

Labels: ``config.data.label_space`` "contiguous" (default) gives labels 1..K,
categories sorted by id, mapped back to category ids by
``DatasetInfo.label_to_category_id``; "coco_ids" makes labels the category ids
themselves (torchvision's 91-slot COCO models). ``config.data.class_names``,
optional: names indexed by label (index 0 the background) shown instead of the
dataset's. :func:`dataset_info` resolves these facts once.

Keypoints (read when ``config.model.keypoint_on``): the dataset's keypoint
names and skeleton (COCO jsons: the category's ``keypoints`` and
``skeleton``), or ``config.data.keypoint_names`` / ``keypoint_skeleton``
when set; the flip map swaps ``left_*`` and ``right_*`` names unless
``config.data.keypoint_flip_map`` gives it; OKS sigmas for evaluation from
``config.data.keypoint_sigmas``, else the dataset's (figures), else COCO's
17 person sigmas when there are 17 keypoints.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Sequence

from mrcnn_jax.data import pipeline, shapes
from mrcnn_jax.data.coco_json import LABEL_SPACES, CocoSource
from mrcnn_jax.data.stream import StreamPosition
from mrcnn_jax.input_spec import InputSpec

DATASETS = ("shapes", "figures", "coco", "coco_format")
SYNTHETIC = ("shapes", "figures")


def _check(config):
  if config.data.name not in DATASETS:
    raise ValueError(f"config.data.name={config.data.name!r} is not a known dataset; "
                     f"expected one of {DATASETS}")


def _shapes_kwargs(config):
  d = config.data
  return dict(num_train=d.num_train, num_validation=d.num_validation, seed=d.dataset_seed)


def coco_source(config) -> CocoSource:
  """The files of a "coco" / "coco_format" dataset, from ``config.data``."""
  d = config.data
  if d.name == "coco":
    return CocoSource(manual_dir=d.get("manual_dir"))
  paths = {k: d.get(k) for k in ("train_json", "train_images", "val_json", "val_images")}
  if not any(paths.values()):
    raise ValueError("config.data.name='coco_format' needs config.data.train_json + "
                     "train_images and/or val_json + val_images")
  return CocoSource(**paths)


def _coco():
  from mrcnn_jax.data import coco  # pylint: disable=g-import-not-at-top
  return coco


@functools.lru_cache(maxsize=8)
def _prepared_coco_builder(data_dir, source: CocoSource):
  return _coco().coco_builder(data_dir, source)


def _coco_builder(config):
  """The prepared builder of the configured COCO dataset, made once per
  (data_dir, source) in a process."""
  return _prepared_coco_builder(config.data.data_dir, coco_source(config))


def _label_options(config) -> tuple[str, tuple[str, ...]]:
  """(label space, class-name override): the one place reading them."""
  d = config.data
  label_space = d.get("label_space") or "contiguous"
  if label_space not in LABEL_SPACES:
    raise ValueError(f"config.data.label_space must be one of {LABEL_SPACES}, got "
                     f"{label_space!r}")
  return label_space, tuple(d.get("class_names") or ())


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Facts of the configured dataset (see :func:`dataset_info`).

  ``class_names``: indexed by label, 0 the background. ``label_to_category_id``:
  {label 1..K: category id of the ground truth}, for ``detections_to_coco``;
  None when labels are the category ids (``label_space="coco_ids"``).
  """

  class_names: list[str]
  label_to_category_id: dict[int, int] | None
  label_space: str = "contiguous"
  # Keypoints (empty without): names, skeleton (1-based index pairs), the
  # left/right flip permutation and OKS sigmas (None: pycocotools' COCO ones).
  keypoint_names: tuple[str, ...] = ()
  keypoint_skeleton: tuple[tuple[int, int], ...] = ()
  keypoint_flip_map: tuple[int, ...] = ()
  keypoint_sigmas: tuple[float, ...] | None = None

  @property
  def num_classes(self) -> int:
    """Background + categories: the model's ``num_classes``."""
    return len(self.class_names)


def dataset_info(config) -> DatasetInfo:
  """Class names and label map of the configured dataset, resolved once.

  COCO datasets are prepared if needed (their builder is made once per
  process). A non-empty ``config.data.class_names`` replaces the dataset's
  names; it may be longer (a model's label space), not shorter. With
  ``label_space="coco_ids"`` and names given, the dataset is not opened.
  """
  _check(config)
  label_space, override = _label_options(config)
  if override and label_space == "coco_ids":
    # Labels are the category ids and the names are given: nothing to read
    # (e.g. predicting with torchvision's COCO weights, no COCO on disk).
    return DatasetInfo(class_names=list(override), label_to_category_id=None,
                       label_space=label_space, **_keypoint_info(config, {}))
  kp_meta = {}
  if config.data.name in SYNTHETIC:
    names = ["background"] + list(_synthetic(config).CLASS_NAMES)
    label_map = {i: i for i in range(1, len(names))}  # category ids = labels
    if config.data.name == "figures":
      kp_meta = {"keypoint_names": figures().KEYPOINT_NAMES,
                 "keypoint_skeleton": figures().SKELETON,
                 "keypoint_sigmas": figures().KEYPOINT_SIGMAS}
  else:
    builder = _coco_builder(config)
    names = ["background"] + _coco().coco_class_names(builder, label_space)
    label_map = _coco().coco_label_map(builder)
    kp_meta = _coco().coco_keypoint_info(builder)
  kp_info = _keypoint_info(config, kp_meta)
  if override:
    if len(override) < len(names):
      raise ValueError(f"config.data.class_names has {len(override)} names, fewer than "
                       f"the {len(names)} labels (background included) of dataset "
                       f"{config.data.name!r} in label space {label_space!r}")
    names = list(override)
  return DatasetInfo(class_names=names,
                     label_to_category_id=None if label_space == "coco_ids" else label_map,
                     label_space=label_space, **kp_info)


def figures():
  from mrcnn_jax.data import figures as figures_module  # pylint: disable=g-import-not-at-top
  return figures_module


def _synthetic(config):
  return shapes if config.data.name == "shapes" else figures()


def _keypoint_info(config, meta) -> dict:
  """The keypoint fields of ``DatasetInfo``: ``config.data.keypoint_*`` over
  the dataset's ``meta`` (names, skeleton, sigmas)."""
  d = config.data
  names = tuple(d.get("keypoint_names") or meta.get("keypoint_names") or ())
  if not names:
    return {}
  skeleton = tuple(tuple(int(i) for i in p)
                   for p in (d.get("keypoint_skeleton") or meta.get("keypoint_skeleton") or ()))
  flip = tuple(d.get("keypoint_flip_map") or figures().flip_map(names))
  if sorted(flip) != list(range(len(names))):
    raise ValueError(f"config.data.keypoint_flip_map {flip} is not a permutation of the "
                     f"{len(names)} keypoints {names}")
  sigmas = d.get("keypoint_sigmas") or meta.get("keypoint_sigmas")
  if sigmas is not None and len(sigmas) != len(names):
    raise ValueError(f"config.data.keypoint_sigmas has {len(sigmas)} values for "
                     f"{len(names)} keypoints")
  return {"keypoint_names": names, "keypoint_skeleton": skeleton, "keypoint_flip_map": flip,
          "keypoint_sigmas": None if sigmas is None else tuple(float(x) for x in sigmas)}


def class_names(config) -> list[str]:
  """Names indexed by label (0 = background): ``config.data.class_names`` if
  set (the dataset is not opened), else the dataset's."""
  _check(config)
  _, override = _label_options(config)
  if override:
    return list(override)
  return dataset_info(config).class_names


def label_to_category_id(config) -> dict[int, int]:
  """{label 1..K: category id of the ground truth} (identity for
  ``label_space="coco_ids"``); prefer ``dataset_info(config)``."""
  info = dataset_info(config)
  if info.label_to_category_id is not None:
    return info.label_to_category_id
  return {i: i for i in range(1, info.num_classes)}


def _keypoint_options(config, info=None) -> dict:
  """Pipeline keyword arguments for keypoints: none unless the model has a
  keypoint head (``config.model.keypoint_on``)."""
  if not config.get("model", {}).get("keypoint_on", False):  # data-only configs have no model
    return {}
  info = info if info is not None else dataset_info(config)
  k = int(config.model.roi_heads.keypoint.num_keypoints)
  if len(info.keypoint_names) != k:
    raise ValueError(
        f"config.model.roi_heads.keypoint.num_keypoints is {k} but dataset "
        f"{config.data.name!r} has {len(info.keypoint_names)} keypoints "
        f"{list(info.keypoint_names)} (set config.data.keypoint_names for a dataset "
        "without them)")
  return {"num_keypoints": k, "keypoint_flip_map": info.keypoint_flip_map}


def _pipeline(config, ds, *, train: bool, batch_dims: Sequence[int],
              start: StreamPosition | None = None, epoch_size: int | None = None,
              drop_remainder: bool = True, shard: tuple[int, int] = (0, 1),
              gt_masks: bool = True):
  d = config.data
  # Sizes, canvases, mean/std: the one InputSpec of the config (validated).
  spec = InputSpec.from_config(d)
  return pipeline.make_pipeline(
      ds, spec=spec, train=train, batch_dims=tuple(batch_dims),
      max_instances=d.max_instances, gt_mask_size=d.gt_mask_size,
      flip_prob=d.flip_prob if train else 0.0, seed=config.seed,
      shuffle_buffer=d.shuffle_buffer, repeat=train, start=start, epoch_size=epoch_size,
      drop_remainder=drop_remainder, shard=shard, gt_masks=gt_masks,
      **_keypoint_options(config))


def _load(config, split: str, train: bool):
  d = config.data
  if d.name == "shapes":
    return shapes.load_shapes(split, d.data_dir, decode=False, **_shapes_kwargs(config))
  if d.name == "figures":
    return figures().load_figures(split, d.data_dir, decode=False, **_shapes_kwargs(config))
  skip_empty = train and d.get("skip_empty_train", True) is not False
  label_space, _ = _label_options(config)
  return _coco().load_coco(_coco_builder(config), split, decode=False,
                           label_space=label_space, skip_empty=skip_empty)


def _train_split_size(config) -> int:
  """Examples in one epoch of the training input, from the dataset's
  metadata (no reading)."""
  d = config.data
  if d.name in SYNTHETIC:  # generated with num_train examples
    return int(d.num_train)
  builder = _coco_builder(config)
  n = builder.info.splits["train"].num_examples
  if d.get("skip_empty_train", True) is not False:
    n -= _coco().coco_split_stats(builder, "train")["num_images_without_non_crowd_objects"]
  return int(n)


def train_iterator(config, batch_dims: Sequence[int], start: StreamPosition | None = None,
                   shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
  """Endless, shuffled, flipped training batches [*batch_dims, ...], each
  with its examples' ``stream_index``; ``start`` (a position saved with a
  checkpoint) resumes the stream exactly (``mrcnn_jax/data/stream.py``).
  ``shard``: (process index, process count): this process's share of the
  split (``pipeline.make_pipeline``), its own stream."""
  _check(config)
  ds = _load(config, "train", train=True)
  return pipeline.numpy_batches(_pipeline(config, ds, train=True, batch_dims=batch_dims,
                                          start=start, epoch_size=_train_split_size(config),
                                          shard=shard))


def eval_iterator(config, batch_dims: Sequence[int],
                  shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
  """One pass over the validation split (or its ``shard``, (index,
  count)); the last batch (of each canvas) is padded with examples whose
  ``image_id`` is -1. Without mask targets (``gt_masks``; the evaluation
  scores against the split's annotations), so no mask is decoded."""
  _check(config)
  ds = _load(config, "validation", train=False)
  return pipeline.numpy_batches(_pipeline(config, ds, train=False, batch_dims=batch_dims,
                                          drop_remainder=False, shard=shard,
                                          gt_masks=False))


def eval_coco_gt(config) -> dict | str:
  """The validation split's ground truth for pycocotools: a COCO dict for
  shapes (category ids equal the labels 1..K), the original json's path for
  COCO datasets (map labels with ``dataset_info(config).label_to_category_id``)."""
  _check(config)
  if config.data.name == "shapes":
    return shapes.shapes_coco_gt(config.data.data_dir, "validation", **_shapes_kwargs(config))
  if config.data.name == "figures":
    return figures().figures_coco_gt(config.data.data_dir, "validation",
                                     **_shapes_kwargs(config))
  return _coco().coco_gt_json(_coco_builder(config), "validation", coco_source(config))
