"""Backbone group, C4 (the paper's Table 2a "ResNet-50-C4" row): RPN and
RoIs on C4, res5 per RoI shared by the box and mask branches."""

import ablation_base as base


def get_config():
  return base.use_c4(base.get_config())
