"""Mask-head group, FCN (the paper's, Table 2e "FCN"): the base FPN model as
it is (two 3x3 convs, 2x deconv, 1x1 predictor on 14 x 14 RoIs)."""

import ablation_base as base


def get_config():
  return base.get_config()
