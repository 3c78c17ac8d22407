"""Mask R-CNN R50-FPN with torchvision's ``maskrcnn_resnet50_fpn`` settings
(DESIGN.md "Numbers to match"): 91-slot COCO label space, so a converted
torchvision checkpoint runs as is.

Evaluate torchvision's COCO weights (reaches 37.9 box AP / 34.6 mask AP on
val2017, torchvision's published figures; needs local COCO, see README):

  mrcnn-jax convert --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --output tv_r50/
  mrcnn-jax evaluate --config experiments/mask_rcnn_r50_fpn.py --checkpoint tv_r50/ \
      --config.data.manual_dir=/data/coco

  python scripts/check_torchvision_parity.py      # proves the conversion

The training recipes (Detectron2's 1x / 3x) are mask_rcnn_r50_fpn_1x.py and
mask_rcnn_r50_fpn_3x.py, which build on this file.
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """torchvision's R50-FPN: the parts' own defaults (mrcnn_jax/model/config.py
  lists the sections: backbone, fpn, rpn, roi_heads.box, roi_heads.mask),
  with only what differs set here."""
  from mrcnn_jax.model import default_model_config

  m = default_model_config()  # ResNet-50, frozen BN, freeze_at=2, FPN 256, ...
  # The mask head runs on the batch's positive RoIs packed into this many
  # slots per image (ops.targets.pack_positive_rois), not on every image's 128
  # positive slots: torchvision and Detectron2 run it on the positives there
  # are (torchvision sampled ~70 per image on a COCO-like batch of 24 objects
  # per image, scripts/benchmark_train.py --boxes 24). Positives beyond the
  # slots are left out at random and counted (num_mask_rois_left_out in the
  # training log); None gives every positive slot a mask. Inference is
  # unaffected.
  m.roi_heads.mask.rois_per_image = 64
  # ... and only on the slots that hold a positive, 8 at a time
  # (layers.apply_to_prefix): R50-FPN train step, batch 2 at 512x512, 4
  # objects/image (14 positives in 128 slots), 2-core EPYC: 5.63 s against
  # 9.23 s on every slot (scripts/benchmark_train.py, 16 at a time). The
  # head costs the same per row in chunks of 8 and 16, and 8 wastes fewer
  # empty rows: the mask branch with 8 of 128 slots filled 0.38-0.40 s
  # against 0.52-0.59 s (README, Speed). On the CPU backend only
  # (layers.CHUNK_BACKENDS).
  m.roi_heads.mask.chunk = 8
  return m


def get_data_config() -> ml_collections.ConfigDict:
  """COCO 2017 from a local directory (see scripts/prepare_coco.py)."""
  from mrcnn_jax.coco_categories import COCO_91_NAMES

  d = ml_collections.ConfigDict()
  d.name = "coco"
  d.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data dir
  d.manual_dir = ml_collections.FieldReference(None, field_type=str)  # train2017/ ...
  # torchvision's GeneralizedRCNNTransform: short side 800, long <= 1333.
  d.min_size = (800,)
  d.max_size = 1333
  # Orientation buckets: one compiled program per canvas.
  d.canvases = ((800, 1344), (1344, 800))
  d.max_instances = 100
  d.gt_mask_size = 112
  d.flip_prob = 0.5
  d.shuffle_buffer = 1024
  # Labels are COCO category ids (torchvision's 91-slot space), so a
  # converted torchvision checkpoint's labels are the category ids.
  d.label_space = "coco_ids"
  d.class_names = COCO_91_NAMES
  return d


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = get_model_config()
  config.data = get_data_config()

  # Training defaults: Detectron2's 1x schedule (batch 16, lr 0.02).
  config.batch_size = 16
  config.total_steps = 90_000
  o = ml_collections.ConfigDict()
  o.name = "sgd"  # or "adamw" (then betas and eps below, momentum unused)
  o.schedule = "multistep"  # or "cosine": from base_lr to 0 at total_steps
  o.base_lr = 0.02
  o.momentum = 0.9
  o.weight_decay = 1e-4
  o.warmup_steps = 1000
  o.warmup_factor = 0.001
  o.decay_steps = (60_000, 80_000)
  o.decay_factor = 0.1
  o.grad_clip_norm = 0.0
  o.betas = (0.9, 0.999)
  o.eps = 1e-8
  config.optimizer = o
  config.loss_weights = ml_collections.ConfigDict(dict(
      loss_rpn_cls=1.0, loss_rpn_box=1.0, loss_cls=1.0, loss_box=1.0, loss_mask=1.0))

  config.checkpoint_every = 5000
  config.keep_checkpoints = 3
  config.log_every = 50
  # Evaluation on the validation split every eval_every steps during
  # training (AP scalars in TensorBoard under eval/); 0: only once, after it.
  config.eval_every = 0
  config.max_consecutive_nonfinite = 5
  # Before the first step the train (and evaluation) step is compiled and
  # XLA's memory analysis compared with what the devices have (README,
  # "Memory checked before the first step"); memory_limit_gb lowers that
  # figure (e.g. on a shared machine).
  config.check_memory = True
  config.memory_limit_gb = ml_collections.FieldReference(None, field_type=float)
  config.eval_batch_size = 8
  # On a CPU, each batch is split over this many XLA:CPU devices; 0: one per
  # usable core, at most what divides the batch sizes (mrcnn_jax/runtime.py).
  config.cpu_devices = 0
  config.num_sample_images = 8
  # An ImageNet ResNet (torchvision .pth) for the backbone, e.g.
  # --config.init_checkpoint=resnet50-0676ba61.pth
  config.init_checkpoint = ml_collections.FieldReference(None, field_type=str)
  config.init_checkpoint_kind = "backbone"
  return config
