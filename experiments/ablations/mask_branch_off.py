"""Mask-branch group, Faster R-CNN: the same model without the mask branch
(``model.mask_on = False``), trained and timed through the same code."""

import ablation_base as base


def get_config():
  config = base.get_config()
  config.model.mask_on = False
  return config
