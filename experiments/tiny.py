"""A config shrunk to seconds per step: a narrow model on 64 x 64 images of
a tiny dataset. For tests and quick end-to-end checks only (the tests'
``tiny_config`` and ``scripts/ablations.py --quick``); nothing trained this
way means anything."""


def shrink(config):
  """``config`` (any experiment's) made tiny in place; returns it."""
  m = config.model
  m.backbone.width = 8
  m.fpn.channels = 16
  m.roi_heads.box.fc_dim = 32
  m.roi_heads.mask.fc_dims = (32,)
  if m.roi_heads.mask.conv_dims:
    m.roi_heads.mask.conv_dims = (16,)
  m.roi_heads.mask.deconv_dim = 16
  m.rpn.pre_nms_topk_train = min(m.rpn.pre_nms_topk_train, 100)
  m.rpn.post_nms_topk_train = 50
  m.rpn.pre_nms_topk_test = min(m.rpn.pre_nms_topk_test, 100)
  m.rpn.post_nms_topk_test = 30
  m.rpn.batch_per_image = 64
  m.roi_heads.batch_per_image = 16
  m.roi_heads.box.detections_per_image = 10
  m.roi_heads.box.candidates = 60
  d = config.data
  d.canvas = (64, 64)
  d.min_size = d.max_size = 64
  d.max_instances = 4
  d.gt_mask_size = 16
  d.num_train = 8
  d.num_validation = 4
  config.batch_size = 2
  config.eval_batch_size = 2
  config.checkpoint_every = 2
  config.log_every = 1
  config.optimizer.warmup_steps = 1
  config.optimizer.decay_steps = (100,)
  return config
