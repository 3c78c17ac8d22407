"""Region proposal network: the learnable head and everything the RPN
decides (anchors, proposals, training targets, losses) in one part.

Shape shorthand: B images, L levels, N_l anchors on level l, A anchors per
location, P proposals per image, G ground-truth boxes per image.

The field defaults are torchvision's ``maskrcnn_resnet50_fpn`` settings and
the one place they are written: ``model.config`` reads them into
``config.model.rpn``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrcnn_jax.model.layers import Conv
from mrcnn_jax.ops import anchors as anchor_ops
from mrcnn_jax.ops import losses as loss_ops
from mrcnn_jax.ops import postprocess
from mrcnn_jax.ops import targets as target_ops

_normal001 = nn.initializers.normal(0.01)


class RPN(nn.Module):
  """Shared 3x3 conv(s) + ReLU, then objectness (A) and box deltas (4A) per
  location; parameters ``conv_{i}``, ``cls_logits``, ``bbox_pred``."""
  # anchors: one tuple of sizes and of aspect ratios per level
  anchor_sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,))
  aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),) * 5
  conv_depth: int = 1
  # proposals
  pre_nms_topk_train: int = 2000
  pre_nms_topk_test: int = 1000
  post_nms_topk_train: int = 2000
  post_nms_topk_test: int = 1000
  nms_threshold: float = 0.7
  min_size: float = 1e-3
  score_threshold: float = 0.0
  # one NMS loop per image instead of a vmapped one (same proposals): set by
  # mrcnn_jax.export for ONNX only; not a config field
  per_image_nms: bool = False
  # training targets
  fg_iou: float = 0.7
  bg_iou: float = 0.3
  batch_per_image: int = 256
  positive_fraction: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence):
    """-> (objectness logits per level [B, N_l], deltas per level [B, N_l, 4]),
    flattened in (y, x, a) order to match ``ops.anchors``."""
    num_anchors = anchor_ops.num_anchors_per_location(self.anchor_sizes[0],
                                                      self.aspect_ratios[0])
    # Every level has the same channels, so one stack serves them all.
    convs = [Conv(features[0].shape[-1], 3, dtype=self.dtype, kernel_init=_normal001,
                  name=f"conv_{i}") for i in range(self.conv_depth)]
    cls = Conv(num_anchors, 1, dtype=self.dtype, kernel_init=_normal001, name="cls_logits")
    box = Conv(4 * num_anchors, 1, dtype=self.dtype, kernel_init=_normal001, name="bbox_pred")
    logits, deltas = [], []
    for f in features:
      x = f
      for c in convs:
        x = nn.relu(c(x))
      b = x.shape[0]
      logits.append(cls(x).reshape(b, -1))
      deltas.append(box(x).reshape(b, -1, 4))
    return logits, deltas

  def anchors(self, canvas_size, features):
    """Anchors per level [N_l, 4] (numpy, static) for these feature grids."""
    if len(self.anchor_sizes) != len(features) or len(self.aspect_ratios) != len(features):
      raise ValueError(
          f"config.model.rpn: anchor_sizes ({len(self.anchor_sizes)}) and aspect_ratios "
          f"({len(self.aspect_ratios)}) need one entry per feature level ({len(features)})")
    grid_sizes = [tuple(f.shape[1:3]) for f in features]
    return anchor_ops.fpn_anchors(canvas_size, grid_sizes, self.anchor_sizes,
                                  self.aspect_ratios)

  def proposals(self, features, canvas_size, image_sizes, objectness, deltas,
                train: bool = False):
    """-> dict ``boxes`` [B, P, 4], ``scores``, ``valid`` (no gradient)."""
    return postprocess.rpn_proposals(
        objectness, deltas, self.anchors(canvas_size, features), image_sizes,
        pre_nms_topk=self.pre_nms_topk_train if train else self.pre_nms_topk_test,
        post_nms_topk=self.post_nms_topk_train if train else self.post_nms_topk_test,
        nms_threshold=self.nms_threshold, min_size=self.min_size,
        score_threshold=self.score_threshold, per_image_nms=self.per_image_nms)

  def targets(self, canvas_size, features, gt_boxes, gt_valid, keys):
    """Anchor labels [B, N] (1 fg, 0 bg, -1 ignored) and deltas [B, N, 4]
    over all levels; ``keys`` [B] one sampling key per image."""
    anchors = jnp.concatenate([jnp.asarray(a) for a in self.anchors(canvas_size, features)],
                              axis=0)
    t = jax.vmap(lambda g, v, k: target_ops.rpn_targets(
        anchors, g, v, k, fg_threshold=self.fg_iou, bg_threshold=self.bg_iou,
        num_samples=self.batch_per_image, positive_fraction=self.positive_fraction))(
            gt_boxes, gt_valid, keys)
    return {"rpn_target_labels": t["labels"], "rpn_target_deltas": t["deltas"]}

  @staticmethod
  def losses(outputs) -> dict:
    cls, box = loss_ops.rpn_losses(outputs["rpn_objectness"], outputs["rpn_deltas"],
                                   outputs["rpn_target_labels"], outputs["rpn_target_deltas"])
    return {"loss_rpn_cls": cls, "loss_rpn_box": box}
