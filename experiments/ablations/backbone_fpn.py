"""Backbone group, FPN (the paper's Table 2a "ResNet-50-FPN" row, here the
shapes model's ResNet-18 at width 32): the base model as it is."""

import ablation_base as base


def get_config():
  return base.get_config()
