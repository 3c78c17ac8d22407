"""Pooler group, RoIAlign (the paper's Table 2d row "RoIAlign" on
ResNet-50-C5): the C5 model (stride 32), whose coarse grid makes the
quantization of RoIPool cost the most. Run by scripts/ablations.py."""

import ablation_base as base


def get_config():
  return base.use_c5(base.get_config())
