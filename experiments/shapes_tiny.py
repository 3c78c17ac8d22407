"""The shapes experiment shrunk to seconds per step: a narrow model, a
64 x 64 canvas, 8 training images (for testing and the notebooks' quick mode,
``MRCNN_NOTEBOOK_QUICK=1``, only: it learns little).

  mrcnn-jax train --config experiments/shapes_tiny.py --workdir /tmp/tiny
"""

import ml_collections

import shapes
import tiny  # experiments/tiny.py: the one tiny shrink of a config


def get_config() -> ml_collections.ConfigDict:
  c = tiny.shrink(shapes.use_sgd(shapes.get_config()))
  c.total_steps = 3
  c.num_sample_images = 2
  return c
