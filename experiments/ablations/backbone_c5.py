"""Backbone group, C5: RPN and RoIs on C5 (stride 32), the model of the
paper's Table 2d."""

import ablation_base as base


def get_config():
  return base.use_c5(base.get_config())
