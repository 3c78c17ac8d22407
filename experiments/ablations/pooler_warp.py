"""Pooler group, RoIWarp: the RoI rounded to the C5 grid as RoIPool rounds
it, then sampled bilinearly as RoIAlign samples it (the paper's Table 2c)."""

import pooler_align


def get_config():
  config = pooler_align.get_config()
  config.model.roi_heads.pooler = "warp"
  return config
