"""Mask R-CNN R50-FPN with torchvision's ``maskrcnn_resnet50_fpn`` inference
settings (DESIGN.md "Numbers to match").

Use it to run a converted torchvision checkpoint:

  mrcnn-jax convert --checkpoint maskrcnn_resnet50_fpn_coco.pth --output ckpt/
  python scripts/check_torchvision_parity.py      # proves the conversion

Converted torchvision v1 weights reach 37.9 box AP / 34.6 mask AP on COCO
val2017 (torchvision's published figures).
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.num_classes = 91  # COCO's 90 category slots + background, as torchvision

  # Backbone: ResNet-50, frozen BN, stem + layer1 frozen (trainable_layers=3).
  m.depth = 50
  m.groups = 1
  m.width_per_group = 64
  m.backbone_norm = "frozen_bn"
  m.freeze_at = 2
  m.backbone_width = 64

  m.fpn_channels = 256
  m.fpn_norm = None

  # Anchors: one size per level P2..P6, three aspect ratios.
  m.anchor_sizes = ((32,), (64,), (128,), (256,), (512,))
  m.aspect_ratios = ((0.5, 1.0, 2.0),) * 5

  m.rpn_conv_depth = 1
  m.rpn_pre_nms_topk_train = 2000
  m.rpn_pre_nms_topk_test = 1000
  m.rpn_post_nms_topk_train = 2000
  m.rpn_post_nms_topk_test = 1000
  m.rpn_nms_threshold = 0.7
  m.rpn_min_size = 1e-3
  m.rpn_score_threshold = 0.0

  # RoIAlign: torchvision's MultiScaleRoIAlign.
  m.box_pool_size = 7
  m.mask_pool_size = 14
  m.sampling_ratio = 2
  m.aligned = False
  m.canonical_scale = 224.0
  m.canonical_level = 4

  # Box head (TwoMLPHead) and detection postprocessing.
  m.box_num_conv = 0
  m.box_conv_dim = 256
  m.box_num_fc = 2
  m.box_fc_dim = 1024
  m.box_head_norm = None
  m.bbox_reg_weights = (10.0, 10.0, 5.0, 5.0)
  m.score_threshold = 0.05
  m.nms_threshold = 0.5
  m.detections_per_image = 100
  m.detection_min_size = 1e-2
  m.detection_candidates = 4000

  # Mask head: 4 x conv 256, deconv, per-class 1x1 conv; sigmoid.
  m.mask_conv_dims = (256, 256, 256, 256)
  m.mask_deconv_dim = 256
  m.mask_head_norm = None
  m.mask_class_agnostic = False

  # Training targets (torchvision / Detectron2 defaults).
  m.rpn_fg_iou = 0.7
  m.rpn_bg_iou = 0.3
  m.rpn_batch_per_image = 256
  m.rpn_positive_fraction = 0.5
  m.roi_fg_iou = 0.5
  m.roi_bg_iou = 0.5
  m.roi_batch_per_image = 512
  m.roi_positive_fraction = 0.25

  m.dtype = "float32"
  return m


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = get_model_config()
  # Input: torchvision's GeneralizedRCNNTransform.
  config.input = ml_collections.ConfigDict()
  config.input.min_size = 800
  config.input.max_size = 1333
  config.input.mean = (0.485, 0.456, 0.406)
  config.input.std = (0.229, 0.224, 0.225)
  config.input.size_divisibility = 32
  return config
