"""Box utilities: format conversion, area, clipping, IoU and the box coder.

Shape shorthand: N, M boxes; B images; K classes.
Boxes are ``xyxy`` in absolute pixel coordinates unless the name says
otherwise (``_xywh``, ``_cxcywh``). Conventions follow torchvision: a box's
width is ``x2 - x1`` (no "+1"), so a box with ``x1 == x2`` has zero area.

All functions are pure ``jax.numpy`` and work on any leading batch shape.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

# torchvision's default clip for exp() in box decoding: a predicted width can
# grow at most 1000/16 times over its reference box.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def xyxy_to_xywh(boxes):
  """xyxy [..., 4] -> xywh [..., 4] (COCO's format)."""
  x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def xywh_to_xyxy(boxes_xywh):
  """xywh [..., 4] -> xyxy [..., 4]."""
  x, y, w, h = jnp.moveaxis(boxes_xywh, -1, 0)
  return jnp.stack([x, y, x + w, y + h], axis=-1)


def xyxy_to_cxcywh(boxes):
  """xyxy [..., 4] -> (centre x, centre y, width, height) [..., 4]."""
  x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
  w, h = x2 - x1, y2 - y1
  return jnp.stack([x1 + 0.5 * w, y1 + 0.5 * h, w, h], axis=-1)


def cxcywh_to_xyxy(boxes_cxcywh):
  """(cx, cy, w, h) [..., 4] -> xyxy [..., 4]."""
  cx, cy, w, h = jnp.moveaxis(boxes_cxcywh, -1, 0)
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h],
                   axis=-1)


def area(boxes):
  """Area of xyxy boxes [..., 4] -> [...]; degenerate boxes give 0."""
  w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  h = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return w * h


def clip(boxes, image_size):
  """Clips xyxy boxes [..., 4] to an image of true size ``image_size``.

  Args:
    boxes: [..., 4] xyxy.
    image_size: (h, w), broadcastable to ``boxes.shape[:-1] + (2,)``; pass each
      image's true (unpadded) size, not the padded canvas.
  """
  image_size = jnp.asarray(image_size, boxes.dtype)
  h = image_size[..., 0:1]
  w = image_size[..., 1:2]
  x = jnp.clip(boxes[..., 0::2], 0.0, w)
  y = jnp.clip(boxes[..., 1::2], 0.0, h)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def min_side_ok(boxes, min_size):
  """True where both sides of xyxy boxes are >= ``min_size`` (torchvision's
  ``remove_small_boxes`` as a mask)."""
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return (w >= min_size) & (h >= min_size)


def pairwise_iou(boxes1, boxes2):
  """IoU of every pair: [..., N, 4] x [..., M, 4] -> [..., N, M].

  Pairs whose union is zero (two degenerate boxes) get IoU 0, not NaN.
  """
  area1 = area(boxes1)[..., :, None]
  area2 = area(boxes2)[..., None, :]
  lt = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  rb = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area1 + area2 - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def encode(boxes, reference_boxes, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)):
  """Encodes target ``boxes`` relative to ``reference_boxes`` (both xyxy).

  Returns deltas [..., 4] = (wx*dx, wy*dy, ww*log(w/w_ref), wh*log(h/h_ref)),
  torchvision's ``BoxCoder.encode_single``. Degenerate reference or target
  sides are floored at a tiny epsilon so the result stays finite; callers
  only use deltas of valid, positive matches.
  """
  wx, wy, ww, wh = weights
  eps = 1e-6
  ref_w = jnp.maximum(reference_boxes[..., 2] - reference_boxes[..., 0], eps)
  ref_h = jnp.maximum(reference_boxes[..., 3] - reference_boxes[..., 1], eps)
  ref_cx = reference_boxes[..., 0] + 0.5 * ref_w
  ref_cy = reference_boxes[..., 1] + 0.5 * ref_h
  gt_w = jnp.maximum(boxes[..., 2] - boxes[..., 0], eps)
  gt_h = jnp.maximum(boxes[..., 3] - boxes[..., 1], eps)
  gt_cx = boxes[..., 0] + 0.5 * gt_w
  gt_cy = boxes[..., 1] + 0.5 * gt_h
  return jnp.stack([
      wx * (gt_cx - ref_cx) / ref_w,
      wy * (gt_cy - ref_cy) / ref_h,
      ww * jnp.log(gt_w / ref_w),
      wh * jnp.log(gt_h / ref_h),
  ], axis=-1)


def decode(deltas, reference_boxes, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
           clip_value: float = BBOX_XFORM_CLIP):
  """Applies ``deltas`` [..., 4] to xyxy ``reference_boxes`` [..., 4].

  torchvision's ``BoxCoder.decode_single``: the log-scale deltas are clamped
  at ``clip_value`` before ``exp`` so a wild prediction cannot overflow.
  """
  wx, wy, ww, wh = weights
  ref_w = reference_boxes[..., 2] - reference_boxes[..., 0]
  ref_h = reference_boxes[..., 3] - reference_boxes[..., 1]
  ref_cx = reference_boxes[..., 0] + 0.5 * ref_w
  ref_cy = reference_boxes[..., 1] + 0.5 * ref_h
  dx = deltas[..., 0] / wx
  dy = deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, clip_value)
  dh = jnp.minimum(deltas[..., 3] / wh, clip_value)
  cx = dx * ref_w + ref_cx
  cy = dy * ref_h + ref_cy
  w = jnp.exp(dw) * ref_w
  h = jnp.exp(dh) * ref_h
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h],
                   axis=-1)
