"""The shapes experiment shrunk to seconds per step: a narrow model, a
64 x 64 canvas, 8 training images (for testing and the notebooks' quick mode,
``MRCNN_NOTEBOOK_QUICK=1``, only: it learns little).

  mrcnn-jax train --config experiments/shapes_tiny.py --workdir /tmp/tiny
"""

import ml_collections

import shapes


def get_config() -> ml_collections.ConfigDict:
  c = shapes.get_config()
  m = c.model
  m.backbone.width = 8
  m.fpn.channels = 16
  m.roi_heads.box.fc_dim = 32
  m.roi_heads.mask.conv_dims = (16,)
  m.roi_heads.mask.deconv_dim = 16
  m.rpn.pre_nms_topk_train = 100
  m.rpn.post_nms_topk_train = 50
  m.rpn.pre_nms_topk_test = 100
  m.rpn.post_nms_topk_test = 30
  m.rpn.batch_per_image = 64
  m.roi_heads.batch_per_image = 16
  m.roi_heads.box.detections_per_image = 10
  m.roi_heads.box.candidates = 60
  c.data.canvas = (64, 64)
  c.data.min_size = 64
  c.data.max_size = 64
  c.data.max_instances = 4
  c.data.gt_mask_size = 16
  c.data.num_train = 8
  c.data.num_validation = 4
  c.batch_size = 2
  c.eval_batch_size = 2
  c.total_steps = 3
  c.checkpoint_every = 2
  c.log_every = 1
  c.optimizer.warmup_steps = 1
  c.optimizer.decay_steps = (100,)
  c.num_sample_images = 2
  return c
