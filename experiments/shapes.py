"""Mask R-CNN on the built-in synthetic shapes dataset, sized for a CPU.

  mrcnn-jax train                                   # this config, ./workdir/shapes
  mrcnn-jax train --config experiments/shapes.py --workdir /tmp/shapes \\
      --config.total_steps=200                      # a shorter run

The dataset (squares, circles, triangles with occlusion on noisy
backgrounds) is generated into the TFDS data dir on first use, in seconds.
The model is a narrow ResNet-18 FPN trained from scratch with GroupNorm (no
pretrained weights can be downloaded, and GroupNorm has no batch statistics,
so the update does not depend on how the batch is split over devices).

Expected: see README.md ("The main job") for the measured wall time and
bbox/segm AP of the plain command on a 2-core CPU.
"""

import ml_collections

import mask_rcnn_r50_fpn as base


def get_config() -> ml_collections.ConfigDict:
  # The R50-FPN config with what differs for a small CPU-sized run.
  config = base.get_config()

  # ---- model: small backbone, narrow FPN and heads, fewer RoIs ----------
  m = config.model
  m.num_classes = 4  # background + square, circle, triangle
  m.depth = 18
  m.backbone_width = 32
  m.backbone_norm = "gn"
  m.freeze_at = 0
  m.fpn_channels = 64
  m.anchor_sizes = ((16,), (32,), (64,), (128,), (256,))
  m.rpn_pre_nms_topk_train = 600
  m.rpn_post_nms_topk_train = 300
  m.rpn_pre_nms_topk_test = 300
  m.rpn_post_nms_topk_test = 100
  m.rpn_batch_per_image = 128
  m.roi_batch_per_image = 64
  m.mask_rois_per_image = 8  # of the 16 positive slots; up to 8 objects/image
  m.box_fc_dim = 256
  m.mask_conv_dims = (64, 64)
  m.mask_deconv_dim = 64
  m.detections_per_image = 20
  m.detection_candidates = 300
  config.label_space = "contiguous"
  config.class_names = ("background", "square", "circle", "triangle")

  # ---- data: replaces the COCO section ------------------------------------
  d = ml_collections.ConfigDict()
  d.name = "shapes"
  d.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS default
  d.num_train = 2000
  d.num_validation = 200
  d.dataset_seed = 0
  d.min_size = 256
  d.max_size = 256
  d.canvas = (256, 256)
  d.max_instances = 8
  d.gt_mask_size = 32
  d.flip_prob = 0.5
  d.shuffle_buffer = 512
  config.data = d

  # ---- optimisation: from scratch, short schedule --------------------------
  config.batch_size = 8  # global; split over all local devices
  config.total_steps = 900
  o = config.optimizer
  o.base_lr = 0.04
  o.warmup_steps = 100
  o.decay_steps = (700, 850)
  o.grad_clip_norm = 10.0

  # ---- checkpoints, logging, evaluation -----------------------------------
  config.checkpoint_every = 250
  config.log_every = 25
  config.num_sample_images = 6
  return config
