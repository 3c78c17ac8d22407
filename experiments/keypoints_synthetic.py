"""Keypoint R-CNN on the built-in synthetic stick figures, sized for a CPU.

  mrcnn-jax train --config experiments/keypoints_synthetic.py     # ./workdir/keypoints_synthetic

The dataset (``mrcnn_figures``: 1 to 4 stick figures per image, 13
keypoints each -- head, shoulders, elbows, hands, hips, knees, feet --
with occlusion, on noisy backgrounds) is generated into the TFDS data dir
on first use, in seconds. The model is the shapes experiment's narrow
ResNet-18 FPN with GroupNorm, trained from scratch, with torchvision's
Keypoint R-CNN head made narrow (2 convs of 64 instead of 8 of 512; 14x14
RoIs, 56x56 heatmaps) and no mask head. Evaluation is pycocotools' bbox and
keypoints (OKS with the dataset's per-keypoint sigmas,
``mrcnn_jax.data.figures.KEYPOINT_SIGMAS``); metrics.json gets
``keypoints/AP`` ... ``keypoints/APl`` and the sample PNGs draw the skeleton.

Expected: see README.md ("Keypoint R-CNN") for the measured wall time and
keypoint AP of this command on a 2-core CPU.
"""

import ml_collections

import shapes as base


def get_config() -> ml_collections.ConfigDict:
  config = base.use_sgd(base.get_config())  # measured with the SGD recipe (README)

  m = config.model
  m.num_classes = 2  # background + figure
  m.mask_on = False
  m.keypoint_on = True
  m.rpn.anchor_sizes = ((32,), (64,), (128,), (256,), (512,))
  k = m.roi_heads.keypoint
  k.num_keypoints = 13
  k.conv_dims = (64, 64)
  k.rois_per_image = 8  # of the 16 positive slots; up to 4 figures per image

  d = config.data
  d.name = "figures"
  d.class_names = ("background", "figure")
  d.max_instances = 6
  d.gt_mask_size = 8  # masks are not trained here; keep their crops small

  config.loss_weights.loss_keypoint = 1.0
  config.total_steps = 500
  config.optimizer.decay_steps = (390, 470)
  return config
