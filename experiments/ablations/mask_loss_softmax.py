"""Mask-loss group, per-pixel softmax over the classes (the paper's
multinomial baseline, Table 2b "softmax"): masks compete across classes."""

import ablation_base as base


def get_config():
  config = base.get_config()
  config.model.roi_heads.mask.loss = "softmax"
  return config
