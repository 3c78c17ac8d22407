"""RoI heads as parts: each owns its pooling, its learnable layers (given to
it), its inference step, its training outputs and its losses, so
``MaskRCNN`` only wires them.

Shape shorthand: B images, R sampled RoIs per image, P proposals per image,
D detections per image, K classes with background, M mask size, N packed
mask RoIs of the batch.

Field defaults are torchvision's ``maskrcnn_resnet50_fpn`` settings, written
only here; ``model.config`` reads them into ``config.model.roi_heads``.

Instance heads (the mask head now, a keypoint head later) share one
interface, which is all ``MaskRCNN`` calls:

* ``predict(features, canvas, detections) -> dict`` of per-detection outputs
  added to the detections (``masks`` here);
* ``train_outputs(features, canvas, targets, gt) -> dict`` of head outputs
  and their targets (``targets`` from ``MaskRCNN.sample_targets``, ``gt``
  the batch's ground truth by name: ``boxes``, ``labels``, ``valid``,
  ``masks``, ...);
* ``losses(outputs, num_images) -> dict`` of named losses.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrcnn_jax.model.layers import apply_head
from mrcnn_jax.ops import losses as loss_ops
from mrcnn_jax.ops import postprocess
from mrcnn_jax.ops import targets as target_ops
from mrcnn_jax.ops.roi_align import multilevel_roi_align
from mrcnn_jax.ops.roi_pool import multilevel_roi_pool


# The poolers ``Pooler.kind`` chooses from (config.model.roi_heads.pooler).
POOLERS = {
    "align": functools.partial(multilevel_roi_align, quantize=False),
    # RoIWarp: the RoI quantized to the feature grid, then bilinear sampling.
    "warp": functools.partial(multilevel_roi_align, quantize=True),
    "pool": multilevel_roi_pool,
}


@dataclasses.dataclass(frozen=True)
class Pooler:
  """Multi-level RoI pooling over ``num_levels`` feature maps from pyramid
  level ``first_level`` on (P2..P5 of an FPN; P6 is for the RPN only; a
  single-level neck gives one map, which every RoI then uses).

  ``kind``: ``"align"`` (RoIAlign, torchvision's ``MultiScaleRoIAlign``),
  ``"warp"`` (RoIWarp: RoIAlign on the RoI rounded to the feature grid) or
  ``"pool"`` (RoIPool: RoI and bins quantized, max; ``ops.roi_pool``, which
  has no sampling points or half-pixel option).
  """
  kind: str = "align"
  sampling_ratio: int = 2
  aligned: bool = False
  canonical_scale: float = 224.0
  canonical_level: int = 4
  first_level: int = 2
  num_levels: int = 4

  def __post_init__(self):
    if self.kind not in POOLERS:
      raise ValueError(f"config.model.roi_heads.pooler must be one of {sorted(POOLERS)}, "
                       f"got {self.kind!r}")

  def __call__(self, features, boxes, canvas_size, size: int, batch_index=None):
    common = dict(canvas_size=canvas_size, batch_index=batch_index,
                  first_level=self.first_level, canonical_scale=self.canonical_scale,
                  canonical_level=self.canonical_level)
    if self.kind != "pool":
      common.update(sampling_ratio=self.sampling_ratio, aligned=self.aligned)
    return POOLERS[self.kind](features[:self.num_levels], boxes, size, **common)


@dataclasses.dataclass(frozen=True)
class RoISampler:
  """Which proposals the RoI heads train on: the ground truth is added to
  the proposals, they are matched at ``fg_iou`` and ``batch_per_image`` are
  sampled with at most ``positive_fraction`` positives (positives first)."""
  batch_per_image: int = 512
  positive_fraction: float = 0.25
  fg_iou: float = 0.5
  bg_iou: float = 0.5

  @property
  def positive_slots(self) -> int:
    """The slots of each image's sample that can hold a positive."""
    return max(1, int(self.batch_per_image * self.positive_fraction))

  def __call__(self, proposals, gt, keys, bbox_reg_weights):
    """Per image: proposals ``boxes`` [B, P, 4] / ``valid``; ``gt`` the
    batch's ground truth; ``keys`` [B] -> sampled RoIs [B, R, ...]."""
    t = jax.vmap(lambda p, pv, g, l, v, k: target_ops.roi_targets(
        p, pv, g, l, v, k, num_samples=self.batch_per_image,
        positive_fraction=self.positive_fraction, fg_threshold=self.fg_iou,
        bg_threshold=self.bg_iou, bbox_reg_weights=tuple(bbox_reg_weights)))(
            proposals["boxes"], proposals["valid"], gt["boxes"], gt["labels"], gt["valid"],
            keys)
    rm = self.positive_slots
    return {
        "roi_boxes": t["boxes"],
        "roi_labels": t["labels"],
        "roi_target_deltas": t["deltas"],
        "roi_is_pos": t["is_pos"],
        "roi_valid": t["valid"],
        "roi_matched_idx": t["matched_idx"],
        # Positives come first in each image's sample, so they all sit in its
        # first ``positive_slots`` slots: the instance heads' candidates.
        "positive_candidates": t["is_pos"][:, :rm] & t["valid"][:, :rm],
    }


class BoxRoIHead(nn.Module):
  """Box branch: pooled RoI features -> ``trunk`` if any (the C4 models'
  res5, shared with the mask branch) -> ``head`` (e.g. ``heads.BoxHead``,
  two fcs) -> ``predictor`` (class logits [.., K], class-specific deltas
  [.., K, 4]); turns them into detections at inference."""
  head: nn.Module
  predictor: nn.Module
  pooler: Pooler = Pooler()
  trunk: Optional[nn.Module] = None
  pool_size: int = 7
  bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)
  # detections
  score_threshold: float = 0.05
  nms_threshold: float = 0.5
  detections_per_image: int = 100
  min_size: float = 1e-2
  candidates: int = 4000
  # see RPN.per_image_nms (export to ONNX only; not a config field)
  per_image_nms: bool = False

  def __call__(self, features, rois, canvas_size, train: bool = False):
    """RoIs [B, R, 4] -> class logits [B, R, K], deltas [B, R, K, 4]."""
    x = self.pooler(features, rois, canvas_size, self.pool_size)
    if self.trunk is not None:
      x = self.trunk(x, train=train)
    return self.predictor(self.head(x, train=train))

  def detect(self, class_logits, deltas, proposals, image_sizes):
    """-> detections [B, D, ...] (``ops.postprocess.detect_boxes``)."""
    return postprocess.detect_boxes(
        class_logits, deltas, proposals["boxes"], proposals["valid"], image_sizes,
        bbox_reg_weights=tuple(self.bbox_reg_weights), score_threshold=self.score_threshold,
        nms_threshold=self.nms_threshold, detections_per_image=self.detections_per_image,
        min_size=self.min_size, candidates_per_image=self.candidates,
        per_image_nms=self.per_image_nms)

  @staticmethod
  def losses(outputs) -> dict:
    cls, box = loss_ops.box_losses(outputs["class_logits"], outputs["box_deltas"],
                                   outputs["roi_labels"], outputs["roi_target_deltas"],
                                   outputs["roi_is_pos"], outputs["roi_valid"])
    return {"loss_cls": cls, "loss_box": box}


# The mask losses MaskRoIHead.loss chooses from (config.model.roi_heads.mask.loss).
MASK_LOSSES = ("sigmoid", "softmax")
# How a softmax-trained head's output becomes a mask at inference
# (config.model.roi_heads.mask.softmax_readout).
SOFTMAX_READOUTS = ("class", "foreground")


class MaskRoIHead(nn.Module):
  """Mask branch: pooled RoI features -> ``trunk`` if any (shared with the
  box branch, which owns its parameters) -> ``head`` (e.g. ``heads.MaskHead``,
  the FCN) -> per-class mask logits [.., M, M, K] (K = 1 class-agnostic).

  ``loss``: ``"sigmoid"`` (the paper's: a per-pixel sigmoid of the
  ground-truth / detected class's channel alone, so classes do not compete)
  or ``"softmax"`` (its multinomial baseline: a per-pixel softmax over all K
  channels, channel 0 being background; the mask is the detected class's
  softmax probability).

  ``softmax_readout`` (softmax only; inference, no parameters): ``"class"``
  (default, the paper's: the detected class's probability) or
  ``"foreground"`` (1 - p(background): every class's share together, i.e.
  whether the pixel is object at all, whatever the class). The two together
  tell a head that has not learned the shape from one that has learned it
  but splits each pixel among the classes.

  In training the head runs on the batch's positive RoIs packed together
  (``ops.targets.pack_positive_rois``) into ``rois_per_image`` slots per
  image, shared by the batch. None: every positive slot (so no positive is
  ever left out); fewer slots cost less, and positives beyond them are left
  out at random (counted in ``num_mask_rois_left_out``).

  ``chunk``: 0, or the training head runs on the filled slots only, up to
  ``chunk`` of them at a time (``layers.apply_to_prefix``): its cost follows the
  batch's positives instead of the slot count, which lets the slots cover
  every positive at no cost for the empty ones. Not for heads with batch
  statistics (``norm="bn"``), whose result would depend on the chunking.
  It applies on the backends in ``layers.CHUNK_BACKENDS`` (the CPU): on a
  GPU the head on every slot at once was measured faster.
  """
  head: nn.Module
  pooler: Pooler = Pooler()
  trunk: Optional[nn.Module] = None
  pool_size: int = 14
  rois_per_image: Optional[int] = None
  chunk: int = 0
  loss: str = "sigmoid"
  softmax_readout: str = "class"

  def __call__(self, features, rois, canvas_size, batch_index=None, train: bool = False,
               count=None):
    """RoIs [B, R, 4] -> mask logits [B, R, M, M, K]; or packed RoIs [N, 4]
    of images ``batch_index`` [N] -> [N, M, M, K]. With ``count`` (packed
    RoIs only) and ``chunk`` (on a backend of ``CHUNK_BACKENDS``), the head
    runs on the first ``count`` RoIs only and the other logits are zeros."""
    x = self.pooler(features, rois, canvas_size, self.pool_size, batch_index)
    if self.trunk is not None:
      x = self.trunk(x, train=train)
    return apply_head(self.head, x, count, self.chunk, train=train)

  def num_slots(self, batch_size: int, positive_slots: int) -> int:
    """Mask RoIs per step on one device: each image's positive slots, or
    ``rois_per_image`` of them, times the batch."""
    per_image = positive_slots
    if self.rois_per_image is not None:
      per_image = min(per_image, int(self.rois_per_image))
    return batch_size * max(1, per_image)

  def predict(self, features, canvas_size, detections) -> dict:
    logits = self(features, detections["boxes"], canvas_size)  # [B, D, M, M, K']
    if self.loss == "softmax":  # the detected class's share of each pixel
      logits = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      if self.softmax_readout == "foreground":  # 1 - p(background)
        return {"masks": 1.0 - jnp.exp(logits[..., 0])}
    if logits.shape[-1] == 1:  # class-agnostic
      chosen = logits[..., 0]
    else:
      chosen = jnp.take_along_axis(
          logits, detections["labels"][:, :, None, None, None], axis=-1)[..., 0]
    chosen = chosen.astype(jnp.float32)
    return {"masks": jnp.exp(chosen) if self.loss == "softmax" else jax.nn.sigmoid(chosen)}

  def train_outputs(self, features, canvas_size, targets, gt) -> dict:
    """The head on the batch's positive RoIs (``targets["positive_candidates"]``)
    packed into slots: per slot the RoI, its image, label, target, logits
    and a ``valid`` flag; plus the number of positives left out."""
    b, g = gt["boxes"].shape[:2]
    cand = targets["positive_candidates"]
    img, slot, valid = target_ops.pack_positive_rois(cand, self.num_slots(b, cand.shape[1]))
    rois = targets["roi_boxes"][img, slot]
    # The filled slots come first (pack_positive_rois).
    logits = self(features, rois, canvas_size, img, train=True,
                  count=valid.sum())  # [N, M, M, K]
    # Ground truth of image i, object j is row i * G + j of the flattened batch.
    masks = gt["masks"]
    mask_t = target_ops.mask_targets(
        rois, img * g + targets["roi_matched_idx"][img, slot], gt["boxes"].reshape(b * g, 4),
        masks.reshape((b * g,) + masks.shape[2:]), logits.shape[1])
    return {
        "mask_rois": rois,
        "mask_batch_index": img,
        "mask_labels": targets["roi_labels"][img, slot],
        "mask_targets": mask_t,
        "mask_valid": valid,
        "mask_logits": logits,
        "num_mask_rois_left_out": cand.sum() - valid.sum(),
    }

  def losses(self, outputs, num_images: int) -> dict:
    fn = loss_ops.mask_softmax_loss if self.loss == "softmax" else loss_ops.mask_loss
    return {"loss_mask": fn(
        outputs["mask_logits"], outputs["mask_labels"], outputs["mask_targets"],
        outputs["mask_valid"], outputs["mask_batch_index"], num_images)}

