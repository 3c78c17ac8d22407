"""Mask R-CNN R50-FPN, Detectron2's 3x recipe: as 1x but 270k steps, decay at
210k and 250k.

  mrcnn-jax train --config experiments/mask_rcnn_r50_fpn_3x.py --workdir runs/r50_3x \\
      --config.data.manual_dir=/data/coco --config.init_checkpoint=resnet50-0676ba61.pth

Detectron2 reports 41.0 box AP / 37.2 mask AP for this recipe; not yet run here.
Memory per device as the 1x recipe: 6.6 GiB at 2 images per device (16 on 8).
"""

import mask_rcnn_r50_fpn_1x as base


def get_config():
  config = base.get_config()
  config.total_steps = 270_000
  config.optimizer.decay_steps = (210_000, 250_000)
  return config
