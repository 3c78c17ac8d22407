"""Input data: TFDS datasets and the tf.data pipeline.

This is the only package that imports TensorFlow / TFDS. Importing
``mrcnn_jax.data`` itself is cheap: the submodules (and with them TensorFlow)
load on first attribute access, e.g. ``mrcnn_jax.data.pipeline`` or
``from mrcnn_jax.data import shapes``.

Submodules:
  shapes    the built-in synthetic "shapes" instance-segmentation dataset
  figures   the built-in synthetic stick-figure keypoint dataset (``mrcnn_figures``)
            (TFDS builder ``mrcnn_shapes``), plus its COCO-format ground truth.
  coco      COCO 2017 and any COCO-format dataset with instance masks (TFDS
            builder ``mrcnn_coco``), prepared from local files.
  coco_json where a COCO-format dataset's files are (``CocoSource``), reading
            and checking its jsons, masks by pycocotools; no TensorFlow.
  pipeline  tf.data pipeline: TFDS-style examples -> static-shape numpy batches.
  datasets  config -> dataset facts (``dataset_info``), train / eval
            iterators and COCO ground truth.
"""

import importlib

_SUBMODULES = ("shapes", "figures", "coco", "coco_json", "pipeline", "datasets")


def hide_accelerators_from_tf() -> None:
  """Keeps TensorFlow off GPUs/TPUs so tf.data does not take device memory.

  Called when the data modules import TensorFlow. It must run before TF
  initialises its devices; if that already happened it does nothing.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for device_type in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError):
      pass  # Devices already initialised, or no such device type.


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_SUBMODULES))
