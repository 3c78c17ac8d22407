"""Mask R-CNN R50-FPN (1x recipe) on your own COCO-format dataset, sized for
one device.

  mrcnn-jax train --config experiments/custom_coco.py --workdir runs/mine \\
      --config.data.train_json=/data/mine/train.json --config.data.train_images=/data/mine/train \\
      --config.data.val_json=/data/mine/val.json --config.data.val_images=/data/mine/val \\
      --config.init_checkpoint=resnet50-0676ba61.pth

The number of classes comes from the json's categories (their ids need not be
contiguous). Shorten ``total_steps`` and ``optimizer.decay_steps`` for a small
dataset, e.g. --config.total_steps=5000 --config.optimizer.decay_steps='(3500, 4500)'.

Batch: 2 images (Detectron2's own default for a custom dataset) with the
learning rate scaled linearly from the 1x recipe's 16 / 0.02, so the command
runs on one device: the train step needs 6.6 GiB at 800x1344 (XLA:CPU
memory analysis; a 24 GB machine has room to spare). On 8 devices use
the recipe's --config.batch_size=16 --config.optimizer.base_lr=0.02. Before
the first step the trainer checks the step's memory against the device's and
names the largest batch that fits.
"""

import ml_collections

import mask_rcnn_r50_fpn_1x as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.data.name = "coco_format"
  config.data.train_json = ml_collections.FieldReference(None, field_type=str)
  config.data.train_images = ml_collections.FieldReference(None, field_type=str)
  config.data.val_json = ml_collections.FieldReference(None, field_type=str)
  config.data.val_images = ml_collections.FieldReference(None, field_type=str)
  config.model.num_classes = 0  # 0: background + the json's categories
  config.data.class_names = ()  # empty: taken from the json
  # One device: 2 images, learning rate 0.02 x 2 / 16 (linear scaling).
  config.batch_size = 2
  config.optimizer.base_lr = 0.0025
  return config
