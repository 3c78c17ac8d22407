"""Mask R-CNN R50-FPN v2 with torchvision's ``maskrcnn_resnet50_fpn_v2``
settings (Li et al., "Benchmarking Detection Transfer Learning with Vision
Transformers", 2021): BatchNorm after every FPN conv, a 2-conv RPN head, a
box head of 4 convs (256, BatchNorm) and one fc of 1024, BatchNorm in the
mask head's convs; the rest as mask_rcnn_r50_fpn.py (torchvision publishes
47.4 box / 41.8 mask AP for its COCO weights, against v1's 37.9 / 34.6).

  mrcnn-jax convert --checkpoint maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth \\
      --config experiments/mask_rcnn_r50_fpn_v2.py --output tv_r50_v2/
  mrcnn-jax evaluate --config experiments/mask_rcnn_r50_fpn_v2.py --checkpoint tv_r50_v2/ \\
      --config.data.manual_dir=/data/coco
  mrcnn-jax predict --config experiments/mask_rcnn_r50_fpn_v2.py --checkpoint tv_r50_v2/ \\
      --output out/ photos/

  python scripts/check_torchvision_parity.py --model maskrcnn_v2  # proves the conversion

The BatchNorm of the FPN and the heads is trainable ("bn": batch statistics
in training, synchronised over the devices; running statistics at
inference); the backbone's stays frozen.
"""

import ml_collections

import mask_rcnn_r50_fpn as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  m = config.model
  m.fpn.norm = "bn"
  m.rpn.conv_depth = 2
  m.roi_heads.box.num_conv = 4
  m.roi_heads.box.conv_dim = 256
  m.roi_heads.box.num_fc = 1
  m.roi_heads.box.fc_dim = 1024
  m.roi_heads.box.norm = "bn"
  m.roi_heads.mask.norm = "bn"
  m.roi_heads.mask.chunk = 0  # batch statistics need every slot at once
  return config
