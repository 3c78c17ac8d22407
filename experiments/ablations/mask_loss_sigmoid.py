"""Mask-loss group, per-class sigmoid (the paper's; its Table 2b
"sigmoid" row): the base FPN model as it is."""

import ablation_base as base


def get_config():
  return base.get_config()
