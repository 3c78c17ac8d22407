"""Mask R-CNN R50-FPN, Detectron2's 1x recipe on COCO 2017: batch 16, lr 0.02,
90k steps, decay x0.1 at 60k and 80k, warmup 1000; ImageNet R50 backbone.

  python scripts/prepare_coco.py --manual-dir /data/coco
  mrcnn-jax train --config experiments/mask_rcnn_r50_fpn_1x.py --workdir runs/r50_1x \\
      --config.data.manual_dir=/data/coco --config.init_checkpoint=resnet50-0676ba61.pth

Detectron2 reports 38.6 box AP / 35.2 mask AP for this recipe (8 GPUs, ~5 h
on V100s); this implementation has not yet been run at COCO scale.

Memory: the global batch of 16 is meant for 8 devices (2 images each). The
train step then needs 6.6 GiB per device (XLA:CPU's memory analysis, either
canvas; 3.6 GiB at 1 image per device, 54 GiB at 16 on one device;
``scripts/memory_need.py``, GPU programs differ somewhat). The trainer checks
this against the devices before its first step and names the largest batch
that fits.
"""

import ml_collections

import mask_rcnn_r50_fpn as base


def get_config() -> ml_collections.ConfigDict:
  from mrcnn_jax.coco_categories import COCO_80_NAMES

  config = base.get_config()
  config.model.num_classes = 81  # background + the 80 used categories
  config.data.label_space = "contiguous"  # labels 1..80 -> category ids via the dataset
  config.data.class_names = ("background",) + COCO_80_NAMES
  # Multi-scale training as Detectron2: short side from this list.
  config.data.min_size = (640, 672, 704, 736, 768, 800)
  return config
