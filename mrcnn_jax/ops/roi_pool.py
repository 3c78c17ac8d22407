"""RoIPool (Girshick, 2015), single- and multi-level, with static shapes.

Shape shorthand: B images, R RoIs per image, C channels, (h, w) the output
size, (H, W) a feature map, Kh = floor(log2 H) + 1, Kw = floor(log2 W) + 1.

Semantics are exactly ``torchvision.ops.roi_pool``'s:

* The RoI is quantized to the feature grid: ``round(x * spatial_scale)``
  (C's round, halves away from zero, in float32), and covers the feature
  pixels ``x1q .. x2q`` inclusive, so its size is ``x2q - x1q + 1``
  (at least 1).
* Bin (i, j) covers rows ``floor(i * bh) .. ceil((i + 1) * bh) - 1`` from
  ``y1q`` on (bh = size / h, float32), clipped to the map; bins overlap by a
  pixel where ``bh`` is not an integer.
* Each bin takes the maximum of its pixels per channel; an empty bin (wholly
  outside the map) gives 0. The gradient goes to the one pixel that won, the
  first in row-major order among equal maxima (torchvision's argmax).

**Static shapes.** A bin's extent depends on the data (any size up to the
whole map), so a fixed-size window cannot hold it and a masked max over the
whole map per bin would cost H * W reads per bin. Instead each image's map
gets a 2-D *sparse table* (range-maximum query): entry (k, l) at (y, x) holds
which pixel is the maximum of the 2^k x 2^l block whose top-left corner is
(y, x). Any rectangle of height e_h and width e_w is covered exactly by four
such blocks (k = floor(log2 e_h), l = floor(log2 e_w), anchored at its four
corners; they overlap, which a maximum does not mind), so every bin is four
index lookups plus four feature reads per channel, whatever its size: the
same number of reads as RoIAlign with ``sampling_ratio=1``.

Cost: building the table is Kh * Kw compare-and-select passes over the map,
and it holds Kh * Kw int32 indices per feature value (for a 64 x 64 map,
49 x the map; for a 16 x 16 C4 map of the shapes experiment, 25 x; for a
200 x 336 FPN P2 of an 800 x 1344 COCO input, 72 x, i.e. 1.2 G entries per
image at 256 channels, too much for COCO-sized FPN training on a small
machine). It is built once per pooling call, carries no gradient, and only
the chosen indices are kept for the backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mrcnn_jax.ops import exact
from mrcnn_jax.ops.roi_align import (_pair, multilevel_layout, quantize_to_grid,
                                     single_map_inputs)


def _num_levels(n: int) -> int:
  """Block sizes 1, 2, 4, ... <= n: floor(log2 n) + 1."""
  return int(n).bit_length()


def _better(v_new, i_new, v_old, i_old):
  """Whether (v_new, i_new) beats (v_old, i_old): a larger value, or an
  equal value at a smaller row-major index (the first maximum, as
  torchvision's strict ``>`` scan finds it)."""
  return (v_new > v_old) | ((v_new == v_old) & (i_new < i_old))


def range_max_table(features):
  """The 2-D sparse table of a map.

  Args:
    features: [..., H, W, C].

  Returns:
    int32 [Kh, Kw, ..., H, W, C]: entry [k, l, ..., y, x, c] is the
    row-major index (y' * W + x') of the maximum of channel c over rows
    y .. y + 2^k - 1 and columns x .. x + 2^l - 1 (first maximum on ties).
    Entries whose block would leave the map are never read (queries keep
    blocks inside it) and hold values of no meaning.
  """
  features = jax.lax.stop_gradient(features)
  h, w = features.shape[-3:-1]
  idx = jnp.broadcast_to(jnp.arange(h * w, dtype=jnp.int32).reshape(h, w, 1),
                         features.shape)

  def combine(v, i, shift, axis):
    # Block of twice the size along ``axis``: the better of the block at
    # (y, x) and the one ``shift`` further on (wrapped around the map where
    # that is past its edge; those entries are never queried).
    v2, i2 = jnp.roll(v, -shift, axis=axis), jnp.roll(i, -shift, axis=axis)
    take = _better(v2, i2, v, i)
    return jnp.where(take, v2, v), jnp.where(take, i2, i)

  rows = []
  v_k, i_k = features, idx
  for k in range(_num_levels(h)):
    if k:
      v_k, i_k = combine(v_k, i_k, 2 ** (k - 1), -3)
    cols, v, i = [i_k], v_k, i_k
    for l in range(1, _num_levels(w)):
      v, i = combine(v, i, 2 ** (l - 1), -2)
      cols.append(i)
    rows.append(jnp.stack(cols))
  return jnp.stack(rows)


def _bin_edges(start, size, pooled: int, limit):
  """Start and end (exclusive) of each bin along one axis, clipped to
  [0, limit]: ([pooled] int32, [pooled] int32). torchvision's float32
  arithmetic: floor(p * size / pooled) and ceil((p + 1) * size / pooled)
  with the quotient rounded first (``exact.f32_quotient``: its last bit
  moves edges). Sizes from 2^24 feature pixels on (boxes millions of
  pixels across) are taken as 2^24 - 1."""
  size = jnp.clip(size, 1, exact.QUOTIENT_LIMIT - 1)
  bin_size = exact.f32_quotient(size, pooled)
  p = jnp.arange(pooled, dtype=jnp.float32)
  lo = jnp.floor(p * bin_size).astype(jnp.int32) + start
  hi = jnp.ceil((p + 1.0) * bin_size).astype(jnp.int32) + start
  return jnp.clip(lo, 0, limit), jnp.clip(hi, 0, limit)


def _pool_one(flat, table, feat_offset, table_offset, height, width, levels_w, box,
              spatial_scale, out_h: int, out_w: int):
  """RoIPool of one box.

  Args:
    flat: [S, C] features; this RoI's map is rows ``feat_offset ..`` in
      row-major (y, x) order, ``height`` x ``width``.
    table: [T, C] int32, sparse tables flattened; this map's table starts at
      row ``table_offset``, laid out [Kh, levels_w, height, width].
    box: [4] xyxy in input pixels; spatial_scale: feature pixels per input
      pixel.

  Returns:
    [out_h, out_w, C] in ``flat.dtype``.
  """
  q = quantize_to_grid(box, spatial_scale).astype(jnp.int32)
  roi_w = jnp.maximum(q[2] - q[0] + 1, 1)
  roi_h = jnp.maximum(q[3] - q[1] + 1, 1)
  y_lo, y_hi = _bin_edges(q[1], roi_h, out_h, height)
  x_lo, x_hi = _bin_edges(q[0], roi_w, out_w, width)
  empty = (y_hi <= y_lo)[:, None] | (x_hi <= x_lo)[None, :]  # [h, w]
  ky = exact.floor_log2(jnp.maximum(y_hi - y_lo, 1))
  kx = exact.floor_log2(jnp.maximum(x_hi - x_lo, 1))
  # The four blocks: top / bottom rows, left / right columns of each bin.
  ys = jnp.stack([y_lo, jnp.maximum(y_hi - 2 ** ky, y_lo)], axis=1)  # [h, 2]
  xs = jnp.stack([x_lo, jnp.maximum(x_hi - 2 ** kx, x_lo)], axis=1)  # [w, 2]
  block = (ky[:, None] * levels_w + kx[None, :]) * (height * width)  # [h, w]
  pos = ys[:, None, :, None] * width + xs[None, :, None, :]  # [h, w, 2, 2]
  cand = table[table_offset + block[:, :, None, None] + pos]  # [h, w, 2, 2, C]
  cand = cand.reshape(out_h, out_w, 4, -1)
  channel = jnp.arange(flat.shape[1])
  best_i = cand[:, :, 0]
  best_v = flat[feat_offset + best_i, channel]
  for j in range(1, 4):
    i = cand[:, :, j]
    v = flat[feat_offset + i, channel]
    take = _better(v, i, best_v, best_i)
    best_v, best_i = jnp.where(take, v, best_v), jnp.where(take, i, best_i)
  # The gradient reaches only the pixel read last into best_v: the winner.
  return jnp.where(empty[:, :, None], jnp.zeros((), flat.dtype), best_v)


def roi_pool(features, boxes, output_size, *, spatial_scale: float = 1.0):
  """RoIPool on one image's feature map.

  Args:
    features: [H, W, C] feature map of one image.
    boxes: [R, 4] xyxy in input pixels (multiplied by ``spatial_scale``).
    output_size: int or (h, w).
    spatial_scale: feature pixels per input pixel (1/stride).

  Returns:
    [R, h, w, C], same values as ``torchvision.ops.roi_pool`` on the NCHW
    transpose; differentiable in ``features`` with torchvision's gradient.
  """
  features, boxes = single_map_inputs("roi_pool", features, boxes)
  out_h, out_w = _pair(output_size)
  h, w, c = features.shape
  table = range_max_table(features).reshape(-1, c)
  flat = features.reshape(h * w, c)
  fn = lambda b: _pool_one(flat, table, 0, 0, h, w, _num_levels(w), b, spatial_scale,
                           out_h, out_w)
  return jax.vmap(fn)(boxes)


def multilevel_roi_pool(features_per_level, boxes, output_size, *, canvas_size,
                        batch_index=None, first_level: int = 2,
                        canonical_scale: float = 224.0, canonical_level: int = 4):
  """RoIPool over a batch and several levels, each RoI on the level
  ``assign_levels`` gives it; arguments and result as
  ``roi_align.multilevel_roi_align`` (no sampling: RoIPool has none)."""
  out_h, out_w = _pair(output_size)
  lay = multilevel_layout(features_per_level, boxes, canvas_size=canvas_size,
                          batch_index=batch_index, first_level=first_level,
                          canonical_scale=canonical_scale, canonical_level=canonical_level)
  b, c = features_per_level[0].shape[0], features_per_level[0].shape[-1]
  # Each level's tables for all images, [B, Kh_l, Kw_l, H_l, W_l, C], laid
  # side by side per image like the features.
  tables, table_offsets, levels_w, acc = [], [], [], 0
  for f, (h, w) in zip(features_per_level, lay.grid_sizes):
    t = jnp.moveaxis(range_max_table(f), 2, 0)  # [B, Kh, Kw, H, W, C]
    tables.append(t.reshape(b, -1, c))
    table_offsets.append(acc)
    levels_w.append(_num_levels(w))
    acc += tables[-1].shape[1]
  table = jnp.concatenate(tables, axis=1).reshape(-1, c)
  table_offsets = jnp.asarray(table_offsets, jnp.int32)
  levels_w = jnp.asarray(levels_w, jnp.int32)

  def one_roi(box, lvl, img):
    return _pool_one(lay.flat, table, img * lay.per_image + lay.offsets[lvl],
                     img * acc + table_offsets[lvl], lay.heights[lvl], lay.widths[lvl],
                     levels_w[lvl], box, lay.scales[lvl], out_h, out_w)

  out = jax.vmap(one_roi)(lay.boxes, lay.levels, lay.batch_index)
  return out.reshape(lay.lead + out.shape[1:])
