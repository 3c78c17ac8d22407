"""Pooler group, RoIPool (Fast R-CNN's): RoI and bins quantized to the C5
grid, max in each bin (the paper's Table 2d row "RoIPool")."""

import pooler_align


def get_config():
  config = pooler_align.get_config()
  config.model.roi_heads.pooler = "pool"
  return config
