"""Keypoints (Keypoint R-CNN): heatmap targets, the loss, and decoding
heatmaps into image coordinates, with torchvision's semantics and static
shapes.

Shape shorthand: R RoIs, K keypoint types, S heatmap size (56), D
detections. Keypoints are (x, y, v) in absolute pixels of the same frame as
the boxes (``xyxy``); v > 0 means labelled (COCO: 1 labelled but hidden, 2
visible; torchvision trains on both). Coordinates are taken as given, as
torchvision does (Detectron2 adds 0.5 to COCO's integer coordinates; we do
not).

Decoding (``heatmaps_to_keypoints``) follows torchvision's
``heatmaps_to_keypoints``: each RoI's S x S map is resized with PyTorch's
bicubic interpolation (a = -0.75, ``align_corners=False``, no
antialiasing) to ceil(h) x ceil(w) pixels of the RoI, the argmax pixel
(first in row-major order on ties) gives the keypoint at that pixel's centre
mapped back into the box, and the interpolated logit there is the score.
That resize has a data-dependent size, up to the whole canvas per map, so it
is not materialised. Instead:

* bicubic interpolation is separable and local: output pixel y of an axis
  reads source rows floor(s) - 1 .. floor(s) + 2 (clamped) with
  s = (y + 0.5) * S / n - 0.5 (float32, as PyTorch). Group the output pixels
  of an axis into *cells* by floor(s) in -1 .. S - 1; all pixels of one 2-D
  cell read the same 4 x 4 source block P and differ only in their weights;
* for each cell an upper bound of its pixels' values is cheap: interpolate
  every source row along x at the pixels of each x cell (the range of each
  row over the cell, r_lo..r_hi); a pixel's value is sum_a wy_a r_a, so it
  is at most sum_a wy_a (r_hi where wy_a >= 0, else r_lo), maximised over
  the cell's y pixels (the bound lets each row pick its own x, which is
  nearly tight on smooth maps);
* the ``num_cells`` cells with the largest bounds are evaluated exactly,
  every pixel of each (at most ceil(max_size / S) + 3 per axis, ``max_size``
  a static bound of the RoI size: the canvas), and the best pixel wins.

The result is torchvision's exactly (up to float32 summation order) whenever
every cell left out has a bound below the best value found; ``exact`` says
whether that held. With random heatmaps and 8 cells it held for every map we
tried (tests/test_keypoints.py); trained heatmaps are far more peaked.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mrcnn_jax.ops import exact

_CUBIC_A = -0.75  # PyTorch's bicubic kernel parameter


def keypoint_targets(keypoints, rois, heatmap_size: int):
  """torchvision's ``keypoints_to_heatmap``: each keypoint's cell on the S x S
  grid of its RoI.

  Args:
    keypoints: [R, K, 3] (x, y, v) in pixels; rois [R, 4] xyxy.
    heatmap_size: S.

  Returns:
    (targets [R, K] int32, the flat index y * S + x (0 where not valid);
    valid [R, K] bool: labelled (v > 0) and inside the RoI, where a keypoint
    exactly on the right / bottom edge counts as the last cell).
  """
  s = heatmap_size
  rois = rois.astype(jnp.float32)
  kp = keypoints.astype(jnp.float32)
  x1, y1 = rois[:, 0:1], rois[:, 1:2]
  # Scale first, then multiply, as torchvision (float32 rounding).
  scale_x = s / (rois[:, 2:3] - x1)
  scale_y = s / (rois[:, 3:4] - y1)
  x, y = kp[..., 0], kp[..., 1]
  xs = jnp.floor((x - x1) * scale_x)
  ys = jnp.floor((y - y1) * scale_y)
  xs = jnp.where(x == rois[:, 2:3], s - 1, xs)
  ys = jnp.where(y == rois[:, 3:4], s - 1, ys)
  inside = (xs >= 0) & (ys >= 0) & (xs < s) & (ys < s)  # NaN / inf compare False
  valid = inside & (kp[..., 2] > 0)
  lin = jnp.where(valid, ys * s + xs, 0.0).astype(jnp.int32)
  return lin, valid


def keypoint_loss(logits, targets, valid):
  """torchvision's ``keypointrcnn_loss``: softmax cross-entropy over the S x S
  positions of each (RoI, keypoint) with a valid target, averaged over all
  of them (0 when there is none).

  Args:
    logits: [N, S, S, K] heatmap logits; targets [N, K] flat indices
      (``keypoint_targets``); valid [N, K] bool.
  """
  n, s, _, k = logits.shape
  flat = jnp.transpose(logits.astype(jnp.float32), (0, 3, 1, 2)).reshape(n, k, s * s)
  nll = (jax.nn.logsumexp(flat, axis=-1)
         - jnp.take_along_axis(flat, targets[..., None], axis=-1)[..., 0])
  v = valid.astype(jnp.float32)
  return (nll * v).sum() / jnp.maximum(v.sum(), 1.0)


def _cubic_weights(t):
  """PyTorch's ``get_cubic_upsample_coefficients``: [..., 4] weights of the
  source samples floor(s) - 1 .. floor(s) + 2 for fraction t."""
  a = _CUBIC_A

  def inner(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def outer(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return jnp.stack([outer(t + 1.0), inner(t), inner(1.0 - t), outer(2.0 - t)], axis=-1)


def _axis_cells(n_out, s: int, per_cell: int):
  """One axis of the bicubic resize of s source samples to ``n_out`` (traced
  int) output pixels, grouped by cell c = floor(source coordinate) in
  -1 .. s - 1.

  Returns (pos [s + 1, per_cell] int32 output pixels, member [s + 1,
  per_cell] bool (the pixel exists and lies in the cell), weights [s + 1,
  per_cell, 4], rows [s + 1, 4] int32 source samples read, clamped)."""
  # PyTorch: (float) input_size / output_size, correctly rounded; a float
  # division is not on a GPU (``ops.exact``), and floor(real) below reads
  # the quotient's last bit.
  scale = exact.f32_quotient(s, jnp.clip(n_out, 1, exact.QUOTIENT_LIMIT - 1))
  cells = jnp.arange(-1, s, dtype=jnp.int32)
  # Each cell's first output pixel, estimated (a float division is fine
  # here: pos starts one pixel early and per_cell has room to spare, and
  # membership is decided exactly from ``real`` below).
  first = jnp.ceil((cells.astype(jnp.float32) + 0.5) / scale - 0.5).astype(jnp.int32) - 1
  pos = first[:, None] + jnp.arange(per_cell, dtype=jnp.int32)[None]
  real = scale * (pos.astype(jnp.float32) + 0.5) - 0.5
  idx = jnp.minimum(jnp.floor(real), s - 1).astype(jnp.int32)
  t = jnp.clip(real - idx.astype(jnp.float32), 0.0, 1.0)
  member = (idx == cells[:, None]) & (pos >= 0) & (pos < n_out)
  rows = jnp.clip(cells[:, None] - 1 + jnp.arange(4, dtype=jnp.int32)[None], 0, s - 1)
  return pos, member, _cubic_weights(t), rows


def _decode_map(heatmap, box, per_cell: int, num_cells: int):
  """One S x S map and its box -> (x, y, score, exact)."""
  s = heatmap.shape[0]
  heatmap = heatmap.astype(jnp.float32)
  w = jnp.maximum(box[2] - box[0], 1.0)
  h = jnp.maximum(box[3] - box[1], 1.0)
  wr = jnp.ceil(w).astype(jnp.int32)
  hr = jnp.ceil(h).astype(jnp.int32)
  ypos, ymem, yw, yrows = _axis_cells(hr, s, per_cell)
  xpos, xmem, xw, xrows = _axis_cells(wr, s, per_cell)
  # Each row of the map interpolated along x at the pixels of each x cell:
  # r[i, cx, q], and its range over the cell's pixels.
  # Full float32 products throughout (a GPU's default is TF32): the values
  # are compared to pick the maximum, as PyTorch's float32 bicubic gives them.
  hp = jax.lax.Precision.HIGHEST
  r = jnp.einsum("icb,cqb->icq", heatmap[:, xrows], xw, precision=hp)  # [s, s + 1, per_cell]
  xm = xmem[None]
  x_any = xmem.any(axis=1)[None, :]
  r_hi = jnp.where(x_any, jnp.where(xm, r, -jnp.inf).max(-1), 0.0)  # [s, s + 1]
  r_lo = jnp.where(x_any, jnp.where(xm, r, jnp.inf).min(-1), 0.0)
  # A pixel's value is sum_a wy_a r[row_a]: bounded by taking, row by row,
  # the largest r where wy_a >= 0 and the smallest where it is negative.
  hi, lo = r_hi[yrows], r_lo[yrows]  # [s + 1 (cy), 4, s + 1 (cx)]
  bound = (jnp.einsum("ypa,yax->ypx", jnp.maximum(yw, 0.0), hi, precision=hp)
           + jnp.einsum("ypa,yax->ypx", jnp.minimum(yw, 0.0), lo, precision=hp))
  bound = jnp.where(ymem[:, :, None], bound, -jnp.inf).max(axis=1)  # [s + 1, s + 1]
  occupied = ymem.any(axis=1)[:, None] & xmem.any(axis=1)[None, :]
  bound = jnp.where(occupied, bound, -jnp.inf).reshape(-1)
  n_cells = min(num_cells + 1, bound.shape[0])
  top_bounds, top = jax.lax.top_k(bound, n_cells)
  cy, cx = top[:num_cells] // (s + 1), top[:num_cells] % (s + 1)

  def cell_best(cy, cx):
    block = heatmap[yrows[cy][:, None], xrows[cx][None, :]]  # [4, 4]
    vals = jnp.einsum("pa,ab,qb->pq", yw[cy], block, xw[cx], precision=hp)
    ok = ymem[cy][:, None] & xmem[cx][None, :]
    vals = jnp.where(ok, vals, -jnp.inf)
    lin = ypos[cy][:, None] * wr + xpos[cx][None, :]
    best = vals.max()
    # First pixel in row-major order among equals, as torch.argmax.
    first = jnp.where(vals == best, lin, jnp.iinfo(jnp.int32).max).min()
    return best, first

  bests, lins = jax.vmap(cell_best)(cy, cx)
  best = bests.max()
  lin = jnp.where(bests == best, lins, jnp.iinfo(jnp.int32).max).min()
  x_int = (lin % wr).astype(jnp.float32)
  y_int = (lin // wr).astype(jnp.float32)
  x = (x_int + 0.5) * (w / wr.astype(jnp.float32)) + box[0]
  y = (y_int + 0.5) * (h / hr.astype(jnp.float32)) + box[1]
  if n_cells > num_cells:
    rest = top_bounds[num_cells]
    exact = rest + 1e-5 * (1.0 + jnp.abs(best)) < best
  else:
    exact = jnp.bool_(True)
  return x, y, best, exact


def heatmaps_to_keypoints(heatmaps, boxes, max_size: int, num_cells: int = 8):
  """torchvision's ``heatmaps_to_keypoints`` with static shapes (module
  docstring).

  Args:
    heatmaps: [D, S, S, K] logits of each RoI's keypoint maps.
    boxes: [D, 4] xyxy RoIs (detections) in pixels.
    max_size: static upper bound of ceil(box width / height), e.g. the
      canvas's longer side (detections are clipped to the image).
    num_cells: cells evaluated exactly per map.

  Returns:
    (keypoints [D, K, 3] (x, y, 1) in the boxes' pixels, scores [D, K] the
    interpolated logit at each keypoint, exact [D, K] bool).
  """
  d, s, _, k = heatmaps.shape
  per_cell = int(math.ceil(max_size / s)) + 3
  maps = jnp.transpose(heatmaps, (0, 3, 1, 2))  # [D, K, S, S]
  fn = jax.vmap(jax.vmap(lambda hm, b: _decode_map(hm, b, per_cell, num_cells),
                         in_axes=(0, None)), in_axes=(0, 0))
  x, y, score, exact = fn(maps, boxes.astype(jnp.float32))
  kps = jnp.stack([x, y, jnp.ones_like(x)], axis=-1)
  return kps, score, exact


def upsample2x_matrix(n: int) -> np.ndarray:
  """[2n, n] weights of PyTorch's bilinear 2x upsampling along one axis
  (``align_corners=False``, scale factor 2 used as given): source
  (i + 0.5) / 2 - 0.5, clamped at 0 and at n - 1."""
  src = np.maximum((np.arange(2 * n, dtype=np.float32) + 0.5) * np.float32(0.5) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
  i1 = np.minimum(i0 + 1, n - 1)
  frac = src - i0
  m = np.zeros((2 * n, n), np.float32)
  np.add.at(m, (np.arange(2 * n), i0), 1.0 - frac)
  np.add.at(m, (np.arange(2 * n), i1), frac)
  return m
