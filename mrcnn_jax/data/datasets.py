"""From a config to iterators of static-shape numpy batches and COCO ground
truth. ``config.data.name`` picks the dataset; today: ``shapes`` (built in).
"""

from __future__ import annotations

from typing import Iterator, Sequence

from mrcnn_jax.data import pipeline, shapes

DATASETS = ("shapes",)


def _check(config):
  if config.data.name not in DATASETS:
    raise ValueError(f"config.data.name={config.data.name!r} is not a known dataset; "
                     f"expected one of {DATASETS}")


def _shapes_kwargs(config):
  d = config.data
  return dict(num_train=d.num_train, num_validation=d.num_validation, seed=d.dataset_seed)


def class_names(config) -> list[str]:
  """Names indexed by label (0 = background)."""
  _check(config)
  return ["background"] + list(shapes.CLASS_NAMES)


def _pipeline(config, ds, *, train: bool, batch_dims: Sequence[int], skip_examples: int = 0,
              drop_remainder: bool = True):
  d = config.data
  return pipeline.make_pipeline(
      ds, train=train, batch_dims=tuple(batch_dims), canvas=tuple(d.canvas),
      min_size=d.min_size, max_size=d.max_size, max_instances=d.max_instances,
      gt_mask_size=d.gt_mask_size, flip_prob=d.flip_prob if train else 0.0,
      seed=config.seed, shuffle_buffer=d.shuffle_buffer, repeat=train,
      skip_examples=skip_examples, drop_remainder=drop_remainder)


def train_iterator(config, batch_dims: Sequence[int], skip_examples: int = 0) -> Iterator[dict]:
  """Endless, shuffled, flipped training batches [*batch_dims, ...];
  ``skip_examples`` resumes the deterministic stream."""
  _check(config)
  ds = shapes.load_shapes("train", config.data.data_dir, decode=False, **_shapes_kwargs(config))
  return pipeline.numpy_batches(_pipeline(config, ds, train=True, batch_dims=batch_dims,
                                          skip_examples=skip_examples))


def eval_iterator(config, batch_dims: Sequence[int]) -> Iterator[dict]:
  """One pass over the validation split; the last batch is padded with
  examples whose ``image_id`` is -1."""
  _check(config)
  ds = shapes.load_shapes("validation", config.data.data_dir, decode=False,
                          **_shapes_kwargs(config))
  return pipeline.numpy_batches(_pipeline(config, ds, train=False, batch_dims=batch_dims,
                                          drop_remainder=False))


def eval_coco_gt(config) -> dict:
  """The validation split's ground truth as a COCO dict (category ids equal
  the contiguous labels 1..K-1)."""
  _check(config)
  return shapes.shapes_coco_gt(config.data.data_dir, "validation", **_shapes_kwargs(config))
