"""Mask R-CNN X101-32x8d-FPN, 3x recipe (ImageNet ResNeXt-101 32x8d backbone,
torchvision layout).

  mrcnn-jax train --config experiments/mask_rcnn_x101_32x8d_fpn_3x.py --workdir runs/x101 \\
      --config.data.manual_dir=/data/coco --config.init_checkpoint=resnext101_32x8d-8ba56ff5.pth

Detectron2 reports 44.3 box AP / 39.5 mask AP for this recipe; not yet run here.
Memory: 12.6 GiB per device at 2 images per device (global batch 16 on 8
devices; XLA:CPU memory analysis, ``scripts/memory_need.py``).
"""

import mask_rcnn_r50_fpn_3x as base


def get_config():
  config = base.get_config()
  config.model.backbone.depth = 101
  config.model.backbone.groups = 32
  config.model.backbone.width_per_group = 8
  return config
