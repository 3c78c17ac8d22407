"""``config.model``, nested by part, with each part's defaults read from the
part itself (its dataclass fields), so a default is written exactly once:

  config.model
    num_classes, dtype, mask_on, keypoint_on
    neck        "fpn" (P2..P6) or "last" (the backbone's last map alone: the
                paper's C4 / C5 models)
    backbone    name ("resnet") + ``resnet.ResNet``'s fields
    fpn         ``fpn.FPN``'s fields
    rpn         ``rpn.RPN``'s fields (anchors, proposals, targets)
    roi_heads   ``RoISampler``'s and ``Pooler``'s fields (shared by the heads);
                pooler ("align", "warp", "pool": ``Pooler.kind``); trunk
                ("none", or "res5": the backbone's res5 run per RoI before
                both heads, ``resnet.ResNetStage`` with the backbone's fields)
      box       head ("fc": ``heads.BoxHead``, "avgpool": ``heads.AvgPoolBoxHead``)
                + ``BoxRoIHead``'s and ``heads.BoxHead``'s fields
      mask      head ("fcn": ``heads.MaskHead``, "mlp": ``heads.MaskMLPHead``)
                + ``MaskRoIHead``'s (loss: "sigmoid" / "softmax";
                softmax_readout: "class" / "foreground") and the heads' fields
      keypoint  ``keypoint_head.KeypointRoIHead``'s and ``KeypointHead``'s
                fields (used when ``keypoint_on``)

The defaults are torchvision's ``maskrcnn_resnet50_fpn``; experiment
configs change only what differs, and ``--config.model.backbone.depth=101``
style overrides reach every field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import ml_collections

from mrcnn_jax.model.fpn import FPN, LastLevel
from mrcnn_jax.model.heads import AvgPoolBoxHead, BoxHead, MaskHead, MaskMLPHead
from mrcnn_jax.model.keypoint_head import KeypointHead, KeypointRoIHead
from mrcnn_jax.model.resnet import ResNet, ResNetStage
from mrcnn_jax.model.roi_heads import BoxRoIHead, MaskRoIHead, Pooler, RoISampler
from mrcnn_jax.model.rpn import RPN

# Fields set by the model as a whole, not per part (and per_image_nms, which
# only mrcnn_jax.export sets).
_NOT_CONFIG = ("parent", "name", "dtype", "axis_name", "num_classes", "head", "predictor",
               "pooler", "trunk", "per_image_nms")
POOLER_FIELDS = ("sampling_ratio", "aligned", "canonical_scale", "canonical_level")

NUM_CLASSES = 91  # COCO's 90 category slots + background, as torchvision
BACKBONES = ("resnet",)
# The part choices: config name -> the part's class (None: no part).
NECKS = {"fpn": FPN, "last": LastLevel}
TRUNKS = {"none": None, "res5": ResNetStage}
BOX_HEADS = {"fc": BoxHead, "avgpool": AvgPoolBoxHead}
MASK_HEADS = {"fcn": MaskHead, "mlp": MaskMLPHead}


def part_defaults(cls, only: Iterable[str] | None = None) -> dict[str, Any]:
  """{field: default} of a part's dataclass fields that belong in the config."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in _NOT_CONFIG or (only is not None and f.name not in only):
      continue
    if f.default is dataclasses.MISSING:
      continue
    out[f.name] = f.default
  return out


def _section(*parts: dict) -> ml_collections.ConfigDict:
  merged = {}
  for p in parts:
    merged.update(p)
  return ml_collections.ConfigDict(merged)


def default_model_config() -> ml_collections.ConfigDict:
  """The full ``config.model`` with every part's defaults."""
  m = ml_collections.ConfigDict()
  m.num_classes = NUM_CLASSES
  m.dtype = "float32"
  m.mask_on = True
  m.keypoint_on = False
  m.neck = "fpn"
  m.backbone = _section({"name": "resnet"}, part_defaults(ResNet))
  m.fpn = _section(part_defaults(FPN))
  m.rpn = _section(part_defaults(RPN))
  m.roi_heads = _section(part_defaults(RoISampler), part_defaults(Pooler, POOLER_FIELDS),
                         {"pooler": part_defaults(Pooler, ("kind",))["kind"],
                          "trunk": "none"})
  m.roi_heads.box = _section({"head": "fc"}, part_defaults(BoxRoIHead), part_defaults(BoxHead))
  m.roi_heads.mask = _section({"head": "fcn"}, part_defaults(MaskRoIHead),
                              part_defaults(MaskHead), part_defaults(MaskMLPHead))
  m.roi_heads.keypoint = _section(part_defaults(KeypointRoIHead), part_defaults(KeypointHead))
  return m


# The flat ``config.model`` of mrcnn_jax before the per-part layout: old
# field -> new dotted path under config.model, for a clear error message.
LEGACY_FIELDS = {
    "depth": "backbone.depth", "groups": "backbone.groups",
    "width_per_group": "backbone.width_per_group", "backbone_norm": "backbone.norm",
    "freeze_at": "backbone.freeze_at", "backbone_width": "backbone.width",
    "fpn_channels": "fpn.channels", "fpn_norm": "fpn.norm",
    "anchor_sizes": "rpn.anchor_sizes", "aspect_ratios": "rpn.aspect_ratios",
    "rpn_conv_depth": "rpn.conv_depth",
    "rpn_pre_nms_topk_train": "rpn.pre_nms_topk_train",
    "rpn_pre_nms_topk_test": "rpn.pre_nms_topk_test",
    "rpn_post_nms_topk_train": "rpn.post_nms_topk_train",
    "rpn_post_nms_topk_test": "rpn.post_nms_topk_test",
    "rpn_nms_threshold": "rpn.nms_threshold", "rpn_min_size": "rpn.min_size",
    "rpn_score_threshold": "rpn.score_threshold", "rpn_fg_iou": "rpn.fg_iou",
    "rpn_bg_iou": "rpn.bg_iou", "rpn_batch_per_image": "rpn.batch_per_image",
    "rpn_positive_fraction": "rpn.positive_fraction",
    "box_pool_size": "roi_heads.box.pool_size", "mask_pool_size": "roi_heads.mask.pool_size",
    "sampling_ratio": "roi_heads.sampling_ratio", "aligned": "roi_heads.aligned",
    "canonical_scale": "roi_heads.canonical_scale",
    "canonical_level": "roi_heads.canonical_level",
    "box_num_conv": "roi_heads.box.num_conv", "box_conv_dim": "roi_heads.box.conv_dim",
    "box_num_fc": "roi_heads.box.num_fc", "box_fc_dim": "roi_heads.box.fc_dim",
    "box_head_norm": "roi_heads.box.norm", "bbox_reg_weights": "roi_heads.box.bbox_reg_weights",
    "score_threshold": "roi_heads.box.score_threshold",
    "nms_threshold": "roi_heads.box.nms_threshold",
    "detections_per_image": "roi_heads.box.detections_per_image",
    "detection_min_size": "roi_heads.box.min_size",
    "detection_candidates": "roi_heads.box.candidates",
    "mask_conv_dims": "roi_heads.mask.conv_dims", "mask_deconv_dim": "roi_heads.mask.deconv_dim",
    "mask_head_norm": "roi_heads.mask.norm", "mask_class_agnostic": "roi_heads.mask.class_agnostic",
    "roi_fg_iou": "roi_heads.fg_iou", "roi_bg_iou": "roi_heads.bg_iou",
    "roi_batch_per_image": "roi_heads.batch_per_image",
    "roi_positive_fraction": "roi_heads.positive_fraction",
    "mask_rois_per_image": "roi_heads.mask.rois_per_image",
}
