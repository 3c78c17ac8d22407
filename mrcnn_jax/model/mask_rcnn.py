"""Mask R-CNN: backbone -> FPN -> RPN -> RoI heads (box, mask).

Shape shorthand: B images, (H, W) padded canvas, L = 5 levels P2..P6,
P proposals per image, D detections per image, K classes with background,
M mask size.

The module holds the learnable parts and wires them; everything that is not
learnable (anchors, proposal selection, RoIAlign, NMS, target assignment)
is a pure function from ``mrcnn_jax.ops``. Inference (``__call__``) is one
static-shape program:

  images [B, H, W, 3], image_sizes [B, 2]
    -> FPN features -> RPN -> P proposals (+ valid)
    -> RoIAlign 7x7 -> box head -> D detections (+ valid)
    -> RoIAlign 14x14 on the detections -> mask head -> M x M probabilities
       of each detection's class.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrcnn_jax.model.fpn import FPN
from mrcnn_jax.model.heads import BoxHead, BoxPredictor, MaskHead, RPNHead
from mrcnn_jax.model.resnet import ResNet
from mrcnn_jax.ops import anchors as anchor_ops
from mrcnn_jax.ops import postprocess
from mrcnn_jax.ops import targets as target_ops
from mrcnn_jax.ops.roi_align import multilevel_roi_align

SIZE_DIVISIBILITY = 32


def check_inputs(images, image_sizes):
  """Raises a clear error for inputs the model cannot take."""
  if not hasattr(images, "shape") or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
        f"images must be a [B, H, W, 3] array (NHWC, RGB); got shape "
        f"{getattr(images, 'shape', type(images))}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(
        f"images must be floating point, normalised (see mrcnn_jax.preprocess); got "
        f"dtype {images.dtype}")
  h, w = images.shape[1:3]
  if h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
    raise ValueError(
        f"image canvas {h}x{w} must be padded to a multiple of {SIZE_DIVISIBILITY} "
        "(see mrcnn_jax.preprocess.pad_to_canvas)")
  if image_sizes is None or tuple(image_sizes.shape) != (images.shape[0], 2):
    raise ValueError(
        f"image_sizes must be [B, 2] (true h, w of each image) with B={images.shape[0]}; "
        f"got {None if image_sizes is None else image_sizes.shape}")


class MaskRCNN(nn.Module):
  num_classes: int = 91
  # backbone
  depth: int = 50
  groups: int = 1
  width_per_group: int = 64
  backbone_norm: Optional[str] = "frozen_bn"
  freeze_at: int = 2
  backbone_width: int = 64
  # fpn
  fpn_channels: int = 256
  fpn_norm: Optional[str] = None
  # anchors and rpn
  anchor_sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,))
  aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),) * 5
  rpn_conv_depth: int = 1
  rpn_pre_nms_topk_train: int = 2000
  rpn_pre_nms_topk_test: int = 1000
  rpn_post_nms_topk_train: int = 2000
  rpn_post_nms_topk_test: int = 1000
  rpn_nms_threshold: float = 0.7
  rpn_min_size: float = 1e-3
  rpn_score_threshold: float = 0.0
  # roi pooling
  box_pool_size: int = 7
  mask_pool_size: int = 14
  sampling_ratio: int = 2
  aligned: bool = False
  canonical_scale: float = 224.0
  canonical_level: int = 4
  # box head
  box_num_conv: int = 0
  box_conv_dim: int = 256
  box_num_fc: int = 2
  box_fc_dim: int = 1024
  box_head_norm: Optional[str] = None
  bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)
  score_threshold: float = 0.05
  nms_threshold: float = 0.5
  detections_per_image: int = 100
  detection_min_size: float = 1e-2
  detection_candidates: int = 4000
  # mask head
  mask_conv_dims: Sequence[int] = (256, 256, 256, 256)
  mask_deconv_dim: int = 256
  mask_head_norm: Optional[str] = None
  mask_class_agnostic: bool = False
  # training targets
  rpn_fg_iou: float = 0.7
  rpn_bg_iou: float = 0.3
  rpn_batch_per_image: int = 256
  rpn_positive_fraction: float = 0.5
  roi_fg_iou: float = 0.5
  roi_bg_iou: float = 0.5
  roi_batch_per_image: int = 512
  roi_positive_fraction: float = 0.25
  # The mask head runs on the batch's positive RoIs packed together
  # (``ops.targets.pack_positive_rois``) into ``mask_rois_per_image`` slots
  # per image, shared by the batch. None: every positive slot
  # (roi_batch_per_image * roi_positive_fraction), so no positive is ever
  # left out; fewer slots cost less, and positives beyond them are left out
  # at random (counted in ``num_mask_rois_left_out``).
  mask_rois_per_image: Optional[int] = None
  # numerics
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  def setup(self):
    self.backbone = ResNet(depth=self.depth, groups=self.groups,
                           width_per_group=self.width_per_group, norm=self.backbone_norm,
                           freeze_at=self.freeze_at, width=self.backbone_width,
                           dtype=self.dtype,
                           axis_name=self.axis_name)
    self.fpn = FPN(channels=self.fpn_channels, norm=self.fpn_norm, dtype=self.dtype,
                   axis_name=self.axis_name)
    num_anchors = anchor_ops.num_anchors_per_location(self.anchor_sizes[0],
                                                      self.aspect_ratios[0])
    self.rpn_head = RPNHead(num_anchors=num_anchors, conv_depth=self.rpn_conv_depth,
                            dtype=self.dtype)
    self.box_head = BoxHead(num_conv=self.box_num_conv, conv_dim=self.box_conv_dim,
                            num_fc=self.box_num_fc, fc_dim=self.box_fc_dim,
                            norm=self.box_head_norm, dtype=self.dtype,
                            axis_name=self.axis_name)
    self.box_predictor = BoxPredictor(num_classes=self.num_classes, dtype=self.dtype)
    self.mask_head = MaskHead(num_classes=self.num_classes, conv_dims=tuple(self.mask_conv_dims),
                              deconv_dim=self.mask_deconv_dim, norm=self.mask_head_norm,
                              class_agnostic=self.mask_class_agnostic, dtype=self.dtype,
                              axis_name=self.axis_name)

  # ---- stages, each usable on its own (notebooks, tests, training) --------

  def features(self, images, train: bool = False):
    """Normalised images [B, H, W, 3] -> [P2..P6] FPN features."""
    return self.fpn(self.backbone(images, train=train), train=train)

  def anchors(self, canvas_size, features):
    grid_sizes = [tuple(f.shape[1:3]) for f in features]
    return anchor_ops.fpn_anchors(canvas_size, grid_sizes, self.anchor_sizes,
                                  self.aspect_ratios)

  def rpn(self, features):
    """-> (objectness logits per level [B, N_l], deltas per level [B, N_l, 4])."""
    return self.rpn_head(features)

  def proposals(self, features, canvas_size, image_sizes, objectness, deltas,
                train: bool = False):
    return postprocess.rpn_proposals(
        objectness, deltas, self.anchors(canvas_size, features), image_sizes,
        pre_nms_topk=self.rpn_pre_nms_topk_train if train else self.rpn_pre_nms_topk_test,
        post_nms_topk=self.rpn_post_nms_topk_train if train else self.rpn_post_nms_topk_test,
        nms_threshold=self.rpn_nms_threshold, min_size=self.rpn_min_size,
        score_threshold=self.rpn_score_threshold)

  def pool(self, features, boxes, canvas_size, size: int, batch_index=None):
    """Multi-level RoIAlign over P2..P5 (P6 is for the RPN only)."""
    return multilevel_roi_align(
        features[:4], boxes, size, canvas_size=canvas_size, batch_index=batch_index,
        first_level=2,
        sampling_ratio=self.sampling_ratio, aligned=self.aligned,
        canonical_scale=self.canonical_scale, canonical_level=self.canonical_level)

  def box_outputs(self, features, rois, canvas_size, train: bool = False):
    """RoIs [B, R, 4] -> class logits [B, R, K], deltas [B, R, K, 4]."""
    x = self.box_head(self.pool(features, rois, canvas_size, self.box_pool_size), train=train)
    return self.box_predictor(x)

  def mask_outputs(self, features, rois, canvas_size, batch_index=None, train: bool = False):
    """RoIs [B, R, 4] -> mask logits [B, R, M, M, K] (K = 1 if class-agnostic);
    or packed RoIs [N, 4] of images ``batch_index`` [N] -> [N, M, M, K]."""
    return self.mask_head(self.pool(features, rois, canvas_size, self.mask_pool_size,
                                    batch_index), train=train)

  # ---- inference -----------------------------------------------------------

  def __call__(self, images, image_sizes):
    """Inference on a padded batch.

    Args:
      images: [B, H, W, 3] float, normalised, H and W multiples of 32.
      image_sizes: [B, 2] int, true (h, w) of each image inside the canvas.

    Returns:
      dict: ``boxes`` [B, D, 4] xyxy in input pixels, ``scores`` [B, D],
      ``labels`` [B, D] int32 (1..K-1), ``valid`` [B, D] bool, ``masks``
      [B, D, M, M] float32 probabilities of the detected class, plus
      ``proposals`` / ``proposals_valid`` [B, P, ...] and
      ``num_candidates`` [B] (see ``ops.postprocess.detect_boxes``).
    """
    check_inputs(images, image_sizes)
    canvas = tuple(images.shape[1:3])
    image_sizes = jnp.asarray(image_sizes, jnp.float32)
    feats = self.features(images)
    objectness, deltas = self.rpn(feats)
    props = self.proposals(feats, canvas, image_sizes, objectness, deltas)
    class_logits, box_deltas = self.box_outputs(feats, props["boxes"], canvas)
    dets = postprocess.detect_boxes(
        class_logits, box_deltas, props["boxes"], props["valid"], image_sizes,
        bbox_reg_weights=tuple(self.bbox_reg_weights), score_threshold=self.score_threshold,
        nms_threshold=self.nms_threshold, detections_per_image=self.detections_per_image,
        min_size=self.detection_min_size, candidates_per_image=self.detection_candidates)
    mask_logits = self.mask_outputs(feats, dets["boxes"], canvas)  # [B, D, M, M, K']
    if self.mask_class_agnostic:
      chosen = mask_logits[..., 0]
    else:
      chosen = jnp.take_along_axis(
          mask_logits, dets["labels"][:, :, None, None, None], axis=-1)[..., 0]
    dets["masks"] = jax.nn.sigmoid(chosen.astype(jnp.float32))
    dets["proposals"] = props["boxes"]
    dets["proposals_valid"] = props["valid"]
    return dets

  # ---- training --------------------------------------------------------------

  def num_mask_slots(self, batch_size: int) -> int:
    """Mask head RoIs per step on one device: the positive slots of each
    image, or ``mask_rois_per_image`` of them, times the batch."""
    per_image = max(1, int(self.roi_batch_per_image * self.roi_positive_fraction))
    if self.mask_rois_per_image is not None:
      per_image = min(per_image, int(self.mask_rois_per_image))
    return batch_size * per_image

  def sample_targets(self, features, canvas_size, image_sizes, objectness, deltas, gt_boxes,
                     gt_labels, gt_valid, rng, image_index):
    """The parameter-free middle of a training step: anchors and their RPN
    targets, proposals, sampled RoIs with box targets, and which RoIs are
    candidates for the mask head (``mask_candidates`` [B, R * positive
    fraction], the positives). Gradients do not flow through any of it.

    Args as ``train_outputs``, plus the FPN ``features`` (for their grid
    sizes) and the RPN's per-level ``objectness`` and ``deltas``.
    """
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(rng, i), 2))(image_index)
    anchors = jnp.concatenate([jnp.asarray(a) for a in self.anchors(canvas_size, features)],
                              axis=0)
    rpn_t = jax.vmap(lambda g, v, k: target_ops.rpn_targets(
        anchors, g, v, k, fg_threshold=self.rpn_fg_iou, bg_threshold=self.rpn_bg_iou,
        num_samples=self.rpn_batch_per_image,
        positive_fraction=self.rpn_positive_fraction))(gt_boxes, gt_valid, keys[:, 0])
    props = self.proposals(features, canvas_size, image_sizes,
                           [jax.lax.stop_gradient(o) for o in objectness],
                           [jax.lax.stop_gradient(d) for d in deltas], train=True)
    roi_t = jax.vmap(lambda p, pv, g, l, v, k: target_ops.roi_targets(
        p, pv, g, l, v, k, num_samples=self.roi_batch_per_image,
        positive_fraction=self.roi_positive_fraction, fg_threshold=self.roi_fg_iou,
        bg_threshold=self.roi_bg_iou, bbox_reg_weights=tuple(self.bbox_reg_weights)))(
            props["boxes"], props["valid"], gt_boxes, gt_labels, gt_valid, keys[:, 1])
    # Positives come first in each image's sample, so they all sit in its
    # first R * positive_fraction slots: the mask head's candidates.
    rm = max(1, int(self.roi_batch_per_image * self.roi_positive_fraction))
    return {
        "rpn_target_labels": rpn_t["labels"],
        "rpn_target_deltas": rpn_t["deltas"],
        "roi_boxes": roi_t["boxes"],
        "roi_labels": roi_t["labels"],
        "roi_target_deltas": roi_t["deltas"],
        "roi_is_pos": roi_t["is_pos"],
        "roi_valid": roi_t["valid"],
        "roi_matched_idx": roi_t["matched_idx"],
        "mask_candidates": roi_t["is_pos"][:, :rm] & roi_t["valid"][:, :rm],
        "num_proposals": props["valid"].sum(axis=1),
    }

  def mask_branch(self, features, canvas_size, targets, gt_boxes, gt_masks, num_slots: int):
    """Mask head on the batch's positive RoIs (``targets["mask_candidates"]``)
    packed into ``num_slots`` slots: per slot the RoI, its image, label,
    target, logits and a ``valid`` flag; plus the number of positives left
    out."""
    b, g = gt_boxes.shape[:2]
    cand = targets["mask_candidates"]
    img, slot, valid = target_ops.pack_positive_rois(cand, num_slots)
    rois = targets["roi_boxes"][img, slot]
    logits = self.mask_outputs(features, rois, canvas_size, img, train=True)  # [N, M, M, K]
    # Ground truth of image i, object j is row i * G + j of the flattened batch.
    mask_t = target_ops.mask_targets(
        rois, img * g + targets["roi_matched_idx"][img, slot], gt_boxes.reshape(b * g, 4),
        gt_masks.reshape((b * g,) + gt_masks.shape[2:]), logits.shape[1])
    return {
        "mask_rois": rois,
        "mask_batch_index": img,
        "mask_labels": targets["roi_labels"][img, slot],
        "mask_targets": mask_t,
        "mask_valid": valid,
        "mask_logits": logits,
        "num_mask_rois_left_out": cand.sum() - valid.sum(),
    }

  def train_outputs(self, images, image_sizes, gt_boxes, gt_labels, gt_valid, gt_masks,
                    rng, image_index=None):
    """Forward pass for training: head outputs next to their targets.

    Args:
      images [B, H, W, 3]; image_sizes [B, 2]; gt_boxes [B, G, 4] xyxy;
      gt_labels [B, G] (1..K-1); gt_valid [B, G]; gt_masks [B, G, S, S] (each
      mask cropped to its box, see ``ops.targets.mask_targets``); rng a PRNG
      key; image_index [B] int, a global index of each image used to derive
      its sampling key, so that splitting a batch over devices samples the
      same anchors and RoIs as one device would.

    Returns a dict of arrays that ``train.compute_losses`` turns into the
    named losses: the targets of ``sample_targets`` and ``mask_branch`` and
    the heads' outputs (``rpn_objectness``, ``rpn_deltas``, ``class_logits``,
    ``box_deltas``, ``mask_logits`` [N, M, M, K] for the packed mask RoIs,
    N = ``num_mask_slots(B)``, valid where ``mask_valid``).
    """
    check_inputs(images, image_sizes)
    canvas = tuple(images.shape[1:3])
    b = images.shape[0]
    image_sizes = jnp.asarray(image_sizes, jnp.float32)
    if image_index is None:
      image_index = jnp.arange(b)
    feats = self.features(images, train=True)
    objectness, deltas = self.rpn(feats)
    out = self.sample_targets(feats, canvas, image_sizes, objectness, deltas, gt_boxes,
                              gt_labels, gt_valid, rng, image_index)
    out["rpn_objectness"] = jnp.concatenate(objectness, axis=1)
    out["rpn_deltas"] = jnp.concatenate(deltas, axis=1)
    out["class_logits"], out["box_deltas"] = self.box_outputs(feats, out["roi_boxes"], canvas,
                                                              train=True)
    # (Choosing the slot count from the positives at run time, one
    # lax.switch branch per count, made the shapes step 2.2x slower on
    # XLA:CPU, so the count is static.)
    out.update(self.mask_branch(feats, canvas, out, gt_boxes, gt_masks,
                                self.num_mask_slots(b)))
    return out
