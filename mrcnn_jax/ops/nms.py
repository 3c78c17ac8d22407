"""Greedy non-maximum suppression with static output size.

Shape shorthand: N candidate boxes, K kept (``max_output``).

``nms`` keeps exactly the set that the classic greedy algorithm keeps
(torchvision.ops.nms): visit boxes in descending score order, keep a box
unless it overlaps an already kept box with IoU > threshold. Output is the
first ``max_output`` kept indices in score order, padded, plus a valid mask.

Implementation: boxes are sorted once; a ``while_loop`` visits them in
order and stops early once ``max_output`` boxes are kept or the candidates
run out. Each step compares one box against the kept set only, so memory is
O(N + K) (no N x N matrix) and the work is O(N * K) at worst.

Ties in score are broken by the lower original index first (stable sort), as
torchvision's CPU kernel does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mrcnn_jax.ops import boxes as box_ops


def _iou_one_to_many(box, boxes):
  """IoU of one xyxy box [4] with boxes [K, 4] -> [K]."""
  lt = jnp.maximum(box[:2], boxes[:, :2])
  rb = jnp.minimum(box[2:], boxes[:, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[:, 0] * wh[:, 1]
  union = box_ops.area(box) + box_ops.area(boxes) - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def nms(boxes, scores, iou_threshold: float, max_output: int, valid=None,
        classes=None):
  """Greedy NMS with a fixed number of outputs.

  Args:
    boxes: [N, 4] xyxy.
    scores: [N]; higher is better.
    iou_threshold: a box is suppressed by a kept box when IoU > threshold.
    max_output: K, the static number of outputs.
    valid: optional [N] bool; invalid boxes are never kept.
    classes: optional [N] int; if given, boxes only suppress boxes of the same
      class (torchvision's ``batched_nms``).

  Returns:
    (indices [K] int32 into the inputs, in descending score order, padded with
    0; valid [K] bool).
  """
  n = boxes.shape[0]
  if valid is None:
    valid = jnp.ones((n,), bool)
  if n == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  # Invalid candidates sort last; a stable sort keeps index order for ties.
  sort_key = jnp.where(valid, -scores.astype(jnp.float32), jnp.inf)
  order = jnp.argsort(sort_key, stable=True).astype(jnp.int32)
  sboxes = boxes[order].astype(jnp.float32)
  svalid = valid[order]
  sclasses = None if classes is None else classes[order]

  kept_boxes = jnp.zeros((max_output, 4), jnp.float32)
  kept_classes = jnp.zeros((max_output,), jnp.int32)
  kept_idx = jnp.zeros((max_output,), jnp.int32)

  def cond(state):
    i, count, *_ = state
    return (i < n) & (count < max_output) & svalid[jnp.minimum(i, n - 1)]

  def body(state):
    i, count, kept_boxes, kept_classes, kept_idx = state
    box = sboxes[i]
    iou = _iou_one_to_many(box, kept_boxes)
    overlaps = (iou > iou_threshold) & (jnp.arange(max_output) < count)
    if sclasses is not None:
      overlaps = overlaps & (kept_classes == sclasses[i])
    keep = ~jnp.any(overlaps)
    slot = jnp.where(keep, count, max_output)  # out of range -> dropped
    kept_boxes = kept_boxes.at[slot].set(box, mode="drop")
    kept_idx = kept_idx.at[slot].set(order[i], mode="drop")
    if sclasses is not None:
      kept_classes = kept_classes.at[slot].set(sclasses[i].astype(jnp.int32),
                                               mode="drop")
    return i + 1, count + keep.astype(jnp.int32), kept_boxes, kept_classes, kept_idx

  _, count, _, _, kept_idx = jax.lax.while_loop(
      cond, body, (jnp.int32(0), jnp.int32(0), kept_boxes, kept_classes, kept_idx))
  out_valid = jnp.arange(max_output) < count
  return jnp.where(out_valid, kept_idx, 0), out_valid


def batched_nms(boxes, scores, classes, iou_threshold: float, max_output: int,
                valid=None):
  """Class-aware NMS: boxes of different classes never suppress each other."""
  return nms(boxes, scores, iou_threshold, max_output, valid=valid,
             classes=classes)


def nms_per_image(boxes, scores, iou_threshold: float, max_output: int, valid,
                  classes=None):
  """``nms`` on each image of a batch: boxes [B, N, 4] xyxy, scores, valid
  (and optionally classes) [B, N] -> (indices [B, K], valid [B, K]).

  One ``while_loop`` per image (B is static) instead of a ``vmap`` of one.
  A vmapped loop runs until the slowest image is done, selects every state
  update per image, and turns each read and write of one box into a batched
  gather / scatter; separate loops stay plain dynamic reads and writes of
  one row, which ONNX converters translate (``mrcnn_jax.export``).
  """
  outs = [nms(boxes[i], scores[i], iou_threshold, max_output, valid=valid[i],
              classes=None if classes is None else classes[i])
          for i in range(boxes.shape[0])]
  return jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs])

