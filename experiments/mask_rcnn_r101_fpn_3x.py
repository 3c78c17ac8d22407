"""Mask R-CNN R101-FPN, 3x recipe (ImageNet ResNet-101 backbone).

  mrcnn-jax train --config experiments/mask_rcnn_r101_fpn_3x.py --workdir runs/r101_3x \\
      --config.data.manual_dir=/data/coco --config.init_checkpoint=resnet101-63fe2227.pth

Detectron2 reports 42.9 box AP / 38.6 mask AP for this recipe; not yet run here.
Memory: 8.4 GiB per device at 2 images per device (global batch 16 on 8
devices; XLA:CPU memory analysis, ``scripts/memory_need.py``).
"""

import mask_rcnn_r50_fpn_3x as base


def get_config():
  config = base.get_config()
  config.model.backbone.depth = 101
  return config
