"""Shared test helpers: a tiny training config and synthetic numpy batches
(no TensorFlow needed)."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))

import shapes_tiny  # noqa: E402


def tiny_config(**overrides):
  """The shapes experiment shrunk to seconds per step (for testing only):
  ``experiments/shapes_tiny.py`` with ``overrides`` (dotted keys)."""
  c = shapes_tiny.get_config()
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def synthetic_batch(rng, batch_dims=(2,), canvas=(64, 64), max_instances=4, mask_size=16,
                    num_objects=2):
  """Rectangles on noise: boxes, labels, masks (cropped rectangles are all
  ones) laid out like the tf.data pipeline's output."""
  b = int(np.prod(batch_dims))
  h, w = canvas
  image = rng.standard_normal((b, h, w, 3)).astype(np.float32) * 0.1
  boxes = np.zeros((b, max_instances, 4), np.float32)
  labels = np.zeros((b, max_instances), np.int32)
  valid = np.zeros((b, max_instances), bool)
  for i in range(b):
    for j in range(num_objects):
      bw, bh = rng.uniform(12, 30, 2)
      x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
      boxes[i, j] = [x1, y1, x1 + bw, y1 + bh]
      labels[i, j] = 1 + (j % 3)
      valid[i, j] = True
      image[i, int(y1):int(y1 + bh), int(x1):int(x1 + bw)] += 1.0 + labels[i, j]
  masks = valid[..., None, None] * np.ones((1, 1, mask_size, mask_size), np.float32)
  batch = {"image": image, "image_size": np.tile(np.asarray(canvas, np.int32), (b, 1)),
           "gt_boxes": boxes, "gt_labels": labels, "gt_valid": valid, "gt_masks": masks,
           "image_id": np.arange(1, b + 1, dtype=np.int32),
           "orig_size": np.tile(np.asarray(canvas, np.int32), (b, 1))}
  return {k: v.reshape(tuple(batch_dims) + v.shape[1:]) for k, v in batch.items()}


def load_script(name: str):
  """``scripts/<name>.py`` imported as a module (the scripts are not a package;
  their directory joins ``sys.path``, as when run, for ``bench_common``)."""
  import importlib.util
  import os
  import sys
  scripts = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "scripts"))
  if scripts not in sys.path:
    sys.path.insert(0, scripts)
  path = os.path.join(scripts, f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
