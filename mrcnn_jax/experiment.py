"""What a run (train, evaluate, predict) needs from its config, resolved
once: the dataset's facts and the model they size.

``config.model.num_classes`` > 0 is used as written; 0 (or less) means
"background + the dataset's categories" (custom COCO-format data), taken from
``dataset_info`` and never written back into the config.
"""

from __future__ import annotations

from mrcnn_jax.model import build_model as _build_model


def dataset_info(config):
  """The dataset's class names, number of classes and label -> category id
  map (``data.datasets.dataset_info``; reads the dataset's metadata, so it
  needs TensorFlow for COCO-format data)."""
  from mrcnn_jax.data import datasets
  return datasets.dataset_info(config)


def num_classes(config, info=None) -> int:
  n = int(config.model.num_classes)
  if n > 0:
    return n
  if info is None:
    raise ValueError("config.model.num_classes is 0 (from the dataset): pass the dataset's "
                     "info (experiment.dataset_info)")
  return int(info.num_classes)


def build_model(config, info=None, **overrides):
  """``MaskRCNN`` of ``config.model`` with the number of classes resolved
  (``model.build_model`` for ``overrides``)."""
  return _build_model(config.model, **dict(overrides, num_classes=num_classes(config, info)))
