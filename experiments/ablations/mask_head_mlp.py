"""Mask-head group, MLP (the paper's Table 2e baseline "fc: 1024 -> 1024 ->
80 x 28^2"): fcs on the flattened 14 x 14 RoI features to a 28 x 28 mask per
class, here 256 -> 256 -> 4 x 28^2 (the shapes model's box-head width)."""

import ablation_base as base


def get_config():
  config = base.get_config()
  config.model.roi_heads.mask.head = "mlp"
  config.model.roi_heads.mask.fc_dims = (256, 256)
  return config
