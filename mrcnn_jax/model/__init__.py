"""Flax modules of Mask R-CNN; ``build_model`` makes one from a config."""

from mrcnn_jax.model.build import build_model, init_params  # noqa: F401
from mrcnn_jax.model.mask_rcnn import MaskRCNN  # noqa: F401
