"""Faster R-CNN R50-FPN with torchvision's ``fasterrcnn_resnet50_fpn``
settings: the Mask R-CNN R50-FPN config (mask_rcnn_r50_fpn.py) without the
mask head. Boxes only; evaluation reports bbox AP.

  mrcnn-jax convert --checkpoint fasterrcnn_resnet50_fpn_coco-258fb6c6.pth \\
      --config experiments/faster_rcnn_r50_fpn.py --output tv_frcnn/
  mrcnn-jax evaluate --config experiments/faster_rcnn_r50_fpn.py --checkpoint tv_frcnn/ \\
      --config.data.manual_dir=/data/coco                  # torchvision: 37.0 box AP
  mrcnn-jax predict --config experiments/faster_rcnn_r50_fpn.py --checkpoint tv_frcnn/ \\
      --output out/ photos/

  python scripts/check_torchvision_parity.py --model fasterrcnn   # proves the conversion
"""

import ml_collections

import mask_rcnn_r50_fpn as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model.mask_on = False
  return config
