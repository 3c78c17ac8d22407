"""Mask pasting and mask-target helpers.

Shape shorthand: N detections, M mask size (28), (H, W) image size.

``paste_masks`` reproduces torchvision's ``paste_masks_in_image`` with static
shapes. torchvision pads each M x M mask by one pixel (to stop the bilinear
resize from smearing the border), grows the box by (M + 2) / M, truncates the
box to integers, resizes the padded mask to the box's integer size with
``F.interpolate(bilinear, align_corners=False)`` and writes it into a blank
image. The output size of that resize depends on the data, so instead we
write the resize as two interpolation matrices (bilinear interpolation is
separable): for each image row y, the source row of the padded mask is
``(y - y0 + 0.5) * (M + 2) / h - 0.5`` clamped at 0 -- the exact formula
PyTorch uses -- and likewise for columns. The paste is then
``Wy [H, M+2] @ mask [M+2, M+2] @ Wx^T [M+2, W]``, with rows/columns outside
the box zeroed. (``mrcnn_jax.client.paste_masks`` is the host-side numpy
twin, for evaluation over images of any size and for exported models.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _expand_boxes(boxes, scale):
  w_half = (boxes[..., 2] - boxes[..., 0]) * 0.5 * scale
  h_half = (boxes[..., 3] - boxes[..., 1]) * 0.5 * scale
  x_c = (boxes[..., 2] + boxes[..., 0]) * 0.5
  y_c = (boxes[..., 3] + boxes[..., 1]) * 0.5
  return jnp.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], -1)


def _interp_matrix(start, end, out_len: int, src_len: int):
  """[out_len, src_len] bilinear weights placing a source of length src_len
  over integer pixels start..end (inclusive) of an axis of length out_len."""
  size = jnp.maximum(end - start + 1, 1).astype(jnp.float32)
  pos = jnp.arange(out_len, dtype=jnp.float32)
  lo = jnp.maximum(start, 0)
  hi = jnp.minimum(end + 1, out_len)
  inside = (pos >= lo) & (pos < hi)
  scale = jnp.float32(src_len) / size
  src = jnp.maximum((pos - start + 0.5) * scale - 0.5, 0.0).astype(jnp.float32)
  i0 = jnp.floor(src)
  frac = src - i0
  i0 = jnp.minimum(i0.astype(jnp.int32), src_len - 1)
  i1 = jnp.minimum(i0 + 1, src_len - 1)
  cols = jnp.arange(src_len)[None, :]
  w = ((cols == i0[:, None]) * (1.0 - frac)[:, None]
       + (cols == i1[:, None]) * frac[:, None])
  return (w * inside[:, None]).astype(jnp.float32)


def _prepare(masks, boxes, padding):
  masks = jnp.asarray(masks, jnp.float32)
  if masks.ndim == 4:
    masks = masks[:, 0]
  m = masks.shape[-1]
  padded = jnp.pad(masks, ((0, 0), (padding, padding), (padding, padding)))
  scale = (m + 2 * padding) / m
  # torch's ``.to(int64)`` truncates toward zero.
  ib = jnp.trunc(_expand_boxes(jnp.asarray(boxes, jnp.float32), scale)).astype(jnp.int32)
  return padded, ib, m + 2 * padding


def paste_masks(masks, boxes, image_size: tuple[int, int], padding: int = 1):
  """Pastes per-detection mask probabilities into full images.

  Args:
    masks: [N, M, M] probabilities (or [N, 1, M, M]).
    boxes: [N, 4] xyxy in pixels of the target image (the original image for
      final outputs: rescale detections first).
    image_size: static (H, W) of the target image.
    padding: pixels of zero padding around each mask (torchvision uses 1).

  Returns:
    [N, H, W] float32 probabilities; threshold at 0.5 for binary masks.
  """
  padded, ib, src = _prepare(masks, boxes, padding)
  h_img, w_img = int(image_size[0]), int(image_size[1])

  def one(mask, box):
    wy = _interp_matrix(box[1], box[3], h_img, src)
    wx = _interp_matrix(box[0], box[2], w_img, src)
    # Full float32 products: on a GPU XLA's default for float32 matmuls is
    # TF32 (10-bit mantissa), up to 6.5e-4 off torchvision's paste there.
    hp = jax.lax.Precision.HIGHEST
    return jnp.matmul(jnp.matmul(wy, mask, precision=hp), wx.T, precision=hp)

  return jax.vmap(one)(padded, ib)

