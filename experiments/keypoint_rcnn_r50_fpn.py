"""Keypoint R-CNN R50-FPN with torchvision's ``keypointrcnn_resnet50_fpn``
settings: two classes (background, person), no mask head, the keypoint
head (8 convs of 512, 4x4 stride-2 deconv to 17 maps, bilinear 2x to 56x56)
on 14x14 RoIAlign features; COCO's 17 person keypoints, their skeleton and
OKS sigmas (pycocotools' own). Labels are COCO category ids (person = 1).

Data: COCO 2017 person keypoints through the COCO-format builder, e.g.

  mrcnn-jax convert --checkpoint keypointrcnn_resnet50_fpn_coco-fc266e95.pth \\
      --config experiments/keypoint_rcnn_r50_fpn.py --output tv_kp/
  mrcnn-jax evaluate --config experiments/keypoint_rcnn_r50_fpn.py --checkpoint tv_kp/ \\
      --config.data.val_json=/data/coco/annotations/person_keypoints_val2017.json \\
      --config.data.val_images=/data/coco/val2017     # torchvision: 54.6 box / 65.0 kp AP
  mrcnn-jax predict --config experiments/keypoint_rcnn_r50_fpn.py --checkpoint tv_kp/ \\
      --output out/ photos/

  python scripts/check_torchvision_parity.py --model keypointrcnn  # proves the conversion

Training (torchvision's recipe samples the short side from 640..800) needs
``train_json`` / ``train_images`` too.
"""

import ml_collections

import mask_rcnn_r50_fpn as base

COCO_PERSON_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  m = config.model
  m.num_classes = 2
  m.mask_on = False
  m.keypoint_on = True
  m.roi_heads.keypoint.num_keypoints = 17
  m.roi_heads.keypoint.rois_per_image = 64
  # The head on the filled slots only, 16 at a time (layers.apply_to_prefix):
  # the training losses' forward and backward, batch 2 at 512x512, 2-core
  # EPYC: 8.9 s against 24.8 s with 19 positives in the 128 slots, 16.8
  # against 24.4 s with 88. Measured on CPU only.
  m.roi_heads.keypoint.chunk = 16

  d = config.data
  d.name = "coco_format"
  for key in ("train_json", "train_images", "val_json", "val_images"):
    d[key] = ml_collections.FieldReference(None, field_type=str)
  d.min_size = (640, 672, 704, 736, 768, 800)
  d.label_space = "coco_ids"
  d.class_names = ("__background__", "person")
  d.keypoint_names = COCO_PERSON_KEYPOINTS
  d.keypoint_skeleton = COCO_PERSON_SKELETON
  config.loss_weights.loss_keypoint = 1.0
  return config
