"""Flax modules of Mask R-CNN: the parts (``resnet``, ``fpn``, ``rpn``,
``roi_heads`` with ``heads``) and their composition ``MaskRCNN``;
``build_model`` makes one from ``config.model`` (``model.config``)."""

from mrcnn_jax.model.build import (build_model, init_params, resolve_model_config,  # noqa: F401
                                   variables_template)
from mrcnn_jax.model.config import default_model_config  # noqa: F401
from mrcnn_jax.model.mask_rcnn import MaskRCNN  # noqa: F401
