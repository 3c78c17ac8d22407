"""Mask-branch group, Mask R-CNN: the base FPN model with its mask branch
(compare box AP and inference time with mask_branch_off; the paper's
Table 3)."""

import ablation_base as base


def get_config():
  return base.get_config()
