"""RoIAlign (He et al., 2017), single- and multi-level, as a vmap over RoIs;
and RoIWarp, RoIAlign on the RoI rounded to the feature grid (the paper's
ablation; RoIPool is ``ops.roi_pool``, which shares the multi-level layout).

Shape shorthand: B images, R RoIs per image, L FPN levels, C channels,
(h, w) the output size, (H, W) a feature map, S = sum_l H_l * W_l.

Semantics are exactly ``torchvision.ops.roi_align`` for ``sampling_ratio >=
1``:

* A box (x1, y1, x2, y2) in input pixels is mapped to feature coordinates by
  ``spatial_scale``. With ``aligned=True`` half a pixel is subtracted first
  (Detectron2's "aligned" RoIAlign): pixel *centres* sit at integer+0.5 in
  continuous coordinates, so a box edge at x maps to feature coordinate
  ``x * scale - 0.5``, and the bilinear samples land on the right pixels. With
  ``aligned=False`` (the original paper and torchvision's Mask R-CNN) there is
  no shift and the RoI's size is floored at 1 feature pixel, which biases
  small boxes; we keep it because converted checkpoints were trained with it.
* The RoI is split into h x w bins; each bin averages ``sampling_ratio**2``
  bilinear samples at the centres of a regular sub-grid. No coordinate is
  ever rounded (the point of RoIAlign versus RoIPool).
* A sample more than one pixel outside the map (y < -1 or y > H) contributes
  0; samples in [-1, 0] clamp to the border; that is torchvision's rule and
  it is why the border treatment below looks asymmetric.

torchvision's adaptive ``sampling_ratio <= 0`` (grid size ceil(roi_size / h))
would make shapes depend on data, so it is rejected here.

Bilinear interpolation is separable, and so is the out-of-range rule, so each
axis gets its own (low index, high index, low weight, high weight) and a
sample reads 4 feature vectors; a bin is the weighted sum of its 4 *
sampling_ratio**2 vectors, computed by ``weighted_gather`` without storing
them. Multi-level RoIAlign flattens all levels of
all images into one [B * S, C] array and gives each RoI the offset, size and
scale of its own level in its own image, so every RoI is sampled once, on
its level only, and RoIs of different images can be pooled together.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp


def _pair(output_size) -> tuple[int, int]:
  if isinstance(output_size, int):
    return output_size, output_size
  h, w = output_size
  return int(h), int(w)


def _axis_samples(start, bin_size, pooled: int, sampling_ratio: int):
  """Sample coordinates along one axis: [pooled * sampling_ratio]."""
  p = jnp.arange(pooled, dtype=jnp.float32)[:, None]
  i = jnp.arange(sampling_ratio, dtype=jnp.float32)[None, :]
  return (start + p * bin_size + (i + 0.5) * bin_size / sampling_ratio).reshape(-1)


def _axis_weights(coords, size):
  """torchvision's ``bilinear_interpolate`` restricted to one axis.

  Args:
    coords: [P] sample coordinates in feature pixels.
    size: number of pixels along the axis (a scalar, may be traced).

  Returns:
    (low [P] int32, high [P] int32, w_low [P], w_high [P]); weights are 0 for
    samples outside [-1, size].
  """
  size_f = jnp.asarray(size, jnp.float32)
  inside = (coords >= -1.0) & (coords <= size_f)
  c = jnp.maximum(coords, 0.0)
  low = jnp.floor(c)
  at_end = low >= size_f - 1
  low = jnp.where(at_end, size_f - 1, low)
  high = jnp.where(at_end, size_f - 1, low + 1)
  c = jnp.where(at_end, low, c)
  frac = c - low
  inside = inside.astype(jnp.float32)
  return (low.astype(jnp.int32), high.astype(jnp.int32),
          (1.0 - frac) * inside, frac * inside)


def round_half_away(x):
  """C's ``round``: halves go away from zero (``jnp.round`` rounds them to
  even). Exact: ``x - trunc(x)`` is exact in floating point."""
  t = jnp.trunc(x)
  return t + jnp.where(jnp.abs(x - t) >= 0.5, jnp.sign(x), 0.0)


def quantize_to_grid(boxes, spatial_scale):
  """RoIPool's quantization of RoIs [..., 4] xyxy in input pixels: the
  feature-grid corners ``round(x * spatial_scale)`` (float32, halves away
  from zero, as torchvision's ``roi_pool`` computes them), in feature pixels."""
  return round_half_away(jnp.asarray(boxes, jnp.float32) * spatial_scale)


def _sample_points(offset, height, width, box, spatial_scale, out_h: int, out_w: int,
                   sampling_ratio: int, aligned: bool, quantize: bool = False):
  """Where RoIAlign of one box reads a (flattened) feature map, and how much.

  Args:
    offset, height, width: scalars (may be traced) locating the box's map:
      rows ``offset .. offset + height * width`` of a flat [S, C] array in
      row-major (y, x) order.
    box: [4] xyxy in input pixels.
    spatial_scale: scalar, feature pixels per input pixel.
    quantize: RoIWarp: the box's feature coordinates are first rounded to
      the grid (``quantize_to_grid``).

  Returns:
    (idx [out_h, out_w, K] int32 rows of the flat map, weights [out_h, out_w,
    K] float32), K = 4 * sampling_ratio**2: a bin's value is the weighted
    sum of its K rows (``weighted_gather``). The bin average is folded into
    the weights.
  """
  box = box.astype(jnp.float32) * spatial_scale
  if quantize:
    box = round_half_away(box)
  shift = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = (box[i] - shift for i in range(4))
  roi_w = x2 - x1
  roi_h = y2 - y1
  if not aligned:
    # Legacy behaviour: malformed / tiny RoIs are forced to 1x1 pixel.
    roi_w = jnp.maximum(roi_w, 1.0)
    roi_h = jnp.maximum(roi_h, 1.0)
  ys = _axis_samples(y1, roi_h / out_h, out_h, sampling_ratio)
  xs = _axis_samples(x1, roi_w / out_w, out_w, sampling_ratio)
  y_lo, y_hi, wy_lo, wy_hi = _axis_weights(ys, height)
  x_lo, x_hi, wx_lo, wx_hi = _axis_weights(xs, width)
  rows = jnp.stack([y_lo, y_hi], axis=1) * width  # [Py, 2]
  cols = jnp.stack([x_lo, x_hi], axis=1)  # [Px, 2]
  idx = offset + rows[:, :, None, None] + cols[None, None, :, :]  # [Py,2,Px,2]
  wy = jnp.stack([wy_lo, wy_hi], axis=1)  # [Py, 2]
  wx = jnp.stack([wx_lo, wx_hi], axis=1)  # [Px, 2]
  sr = sampling_ratio
  w = (wy[:, :, None, None] * wx[None, None, :, :]) / (sr * sr)

  def by_bin(a):  # [h*sr, 2, w*sr, 2] -> [h, w, sr*2*sr*2]: one axis per bin
    return a.reshape(out_h, sr, 2, out_w, sr, 2).transpose(0, 3, 1, 2, 4, 5).reshape(
        out_h, out_w, -1)

  return by_bin(idx), by_bin(w)


@jax.custom_vjp
def weighted_gather(flat, idx, weights):
  """out[..., c] = sum_k weights[..., k] * flat[idx[..., k], c], in float32,
  returned in ``flat.dtype``; flat [S, C], idx and weights [..., K], every
  index in [0, S). The pooling step of RoIAlign.

  Written as K gathers of whole feature vectors, each multiplied and added
  into the result, so XLA fuses the gathers into the sum and never stores
  the [..., K, C] gathered vectors: for 1000 RoIs of 7 x 7 bins (K = 16,
  C = 256, the box head) 20 ms against 310 ms for the gather followed by a
  contraction, which writes and reads back 800 MB (2-core EPYC, XLA:CPU).
  Its gradient is one scatter-add (``_weighted_gather_bwd``): autodiff of
  the fused form would give K scatter-adds, about 3x slower.
  """
  acc = None
  for k in range(idx.shape[-1]):
    term = _rows(flat, idx, k) * weights[..., k, None].astype(jnp.float32)
    acc = term if acc is None else acc + term
  return acc.astype(flat.dtype)


def _rows(flat, idx, k: int):
  """flat's rows at idx[..., k], in float32: [..., C]."""
  return jnp.take(flat, idx[..., k], axis=0, mode="clip").astype(jnp.float32)


def _weighted_gather_fwd(flat, idx, weights):
  return weighted_gather(flat, idx, weights), (flat, idx, weights)


def _weighted_gather_bwd(residuals, dy):
  flat, idx, weights = residuals
  dy = dy.astype(jnp.float32)
  c = flat.shape[-1]
  # d flat: each gathered row receives weight * dy, summed over repeats.
  contrib = dy[..., None, :] * weights[..., None].astype(jnp.float32)  # [..., K, C]
  dflat = jnp.zeros(flat.shape, jnp.float32).at[idx.reshape(-1)].add(
      contrib.reshape(-1, c))
  # d weights[..., k] = <dy, flat[idx[..., k]]> (unused by the models, whose
  # RoIs carry no gradient; XLA drops it then).
  dw = jnp.stack([(_rows(flat, idx, k) * dy).sum(-1) for k in range(idx.shape[-1])], axis=-1)
  return dflat.astype(flat.dtype), None, dw.astype(weights.dtype)


weighted_gather.defvjp(_weighted_gather_fwd, _weighted_gather_bwd)


def single_map_inputs(op: str, features, boxes):
  """``features`` [H, W, C] and ``boxes`` [R, 4] as arrays, or a clear error."""
  features = jnp.asarray(features)
  boxes = jnp.asarray(boxes)
  if features.ndim != 3:
    raise ValueError(f"{op}: features must be [H, W, C], got shape {features.shape}")
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"{op}: boxes must be [R, 4] xyxy, got shape {boxes.shape}")
  return features, boxes


def _check_sampling_ratio(sampling_ratio):
  if not isinstance(sampling_ratio, int) or sampling_ratio < 1:
    raise ValueError(
        f"sampling_ratio must be an int >= 1 (got {sampling_ratio!r}); the "
        "adaptive mode (<= 0) makes shapes data-dependent and is not supported")


def roi_align(features, boxes, output_size, *, spatial_scale: float = 1.0,
              sampling_ratio: int = 2, aligned: bool = False, quantize: bool = False):
  """RoIAlign on one image's feature map.

  Args:
    features: [H, W, C] feature map of one image.
    boxes: [R, 4] xyxy in input pixels (multiplied by ``spatial_scale`` to get
      feature coordinates).
    output_size: int or (h, w).
    spatial_scale: feature pixels per input pixel (1/stride).
    sampling_ratio: samples per bin along each axis (>= 1).
    aligned: Detectron2's half-pixel-corrected variant (see module doc).
    quantize: round the RoI to the feature grid first (``roi_warp``).

  Returns:
    [R, h, w, C], same values as ``torchvision.ops.roi_align`` on the NCHW
    transpose. Differentiable in ``features``.
  """
  features, boxes = single_map_inputs("roi_align", features, boxes)
  _check_sampling_ratio(sampling_ratio)
  out_h, out_w = _pair(output_size)
  h, w, c = features.shape
  flat = features.reshape(h * w, c)
  fn = lambda b: _sample_points(0, h, w, b, spatial_scale, out_h, out_w,
                                sampling_ratio, aligned, quantize)
  return weighted_gather(flat, *jax.vmap(fn)(boxes))


def roi_warp(features, boxes, output_size, *, spatial_scale: float = 1.0,
             sampling_ratio: int = 2, aligned: bool = False):
  """RoIWarp (Dai et al., 2016, as the Mask R-CNN paper's ablation uses it):
  the RoI is quantized to the feature grid as RoIPool quantizes it
  (``quantize_to_grid``), then sampled bilinearly as RoIAlign samples it.
  Exactly ``roi_align`` on the boxes ``quantize_to_grid(boxes, s) / s``;
  arguments and result as ``roi_align``. The bins are not quantized (only
  the RoI is), which is why the paper finds it barely better than RoIPool."""
  return roi_align(features, boxes, output_size, spatial_scale=spatial_scale,
                   sampling_ratio=sampling_ratio, aligned=aligned, quantize=True)


def assign_levels(boxes, min_level: int = 2, max_level: int = 5,
                  canonical_scale: float = 224.0, canonical_level: int = 4,
                  eps: float = 1e-6):
  """FPN level of each xyxy box [..., 4] -> [...] int32 (paper eq. 1).

  torchvision's ``LevelMapper``: floor(4 + log2(sqrt(area) / 224) + 1e-6),
  clamped to [min_level, max_level]. Zero-area boxes go to ``min_level``.
  """
  w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  h = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  s = jnp.sqrt(jnp.maximum(w * h, 1e-12))
  lvl = jnp.floor(canonical_level + jnp.log2(s / canonical_scale) + eps)
  return jnp.clip(lvl, min_level, max_level).astype(jnp.int32)


def level_scales(canvas_size: tuple[int, int], grid_sizes: Sequence[tuple[int, int]]):
  """Spatial scale of each level, torchvision's ``_infer_scale``: the ratio of
  grid to image size, rounded to a power of two."""
  return [2.0 ** round(math.log2(g[0] / canvas_size[0])) for g in grid_sizes]


class MultiLevelLayout(NamedTuple):
  """Every level of every image as one [B * S, C] map, and where each RoI
  reads: RoI n of image ``batch_index[n]`` on level ``levels[n]`` reads the
  rows from ``batch_index[n] * per_image + offsets[levels[n]]`` on, a map of
  ``heights[l] x widths[l]`` at ``scales[l]`` feature pixels per input pixel.
  ``boxes`` [N, 4] are the RoIs flattened, ``lead`` the leading shape of the
  output ([B, R] or [N])."""
  flat: jax.Array
  per_image: int
  grid_sizes: tuple
  offsets: jax.Array
  heights: jax.Array
  widths: jax.Array
  scales: jax.Array
  boxes: jax.Array
  batch_index: jax.Array
  levels: jax.Array
  lead: tuple


def flatten_levels(features_per_level: Sequence):
  """All levels of all images as one [B * S, C] map, S = sum of H_l * W_l:
  pixel (y, x) of level l of image i is row i * S + offsets[l] + y * W_l + x.

  Returns (flat [B * S, C], S, offsets: a list of L ints)."""
  b, c = features_per_level[0].shape[0], features_per_level[0].shape[-1]
  flat = jnp.concatenate([f.reshape(b, -1, c) for f in features_per_level], axis=1)
  per_image = flat.shape[1]
  offsets = [0]
  for f in features_per_level[:-1]:
    offsets.append(offsets[-1] + f.shape[1] * f.shape[2])
  return flat.reshape(b * per_image, c), per_image, offsets


def multilevel_layout(features_per_level: Sequence, boxes, *, canvas_size: tuple[int, int],
                      batch_index=None, first_level: int = 2, canonical_scale: float = 224.0,
                      canonical_level: int = 4) -> MultiLevelLayout:
  """The shared set-up of the multi-level poolers (RoIAlign, RoIWarp,
  RoIPool): arguments as ``multilevel_roi_align``."""
  grid_sizes = tuple(tuple(f.shape[1:3]) for f in features_per_level)
  scales = level_scales(canvas_size, grid_sizes)
  num_levels = len(features_per_level)
  b = features_per_level[0].shape[0]
  flat, per_image, offsets = flatten_levels(features_per_level)

  if batch_index is None:
    if boxes.ndim != 3 or boxes.shape[0] != b:
      raise ValueError(f"boxes must be [B={b}, R, 4] without batch_index, got {boxes.shape}")
    lead = tuple(boxes.shape[:2])
    batch_index = jnp.repeat(jnp.arange(b, dtype=jnp.int32), boxes.shape[1])
    boxes = boxes.reshape(-1, 4)
  else:
    if boxes.ndim != 2 or batch_index.shape != boxes.shape[:1]:
      raise ValueError(f"with batch_index [N], boxes must be [N, 4]; got boxes "
                       f"{boxes.shape}, batch_index {batch_index.shape}")
    lead = tuple(boxes.shape[:1])
  levels = assign_levels(jax.lax.stop_gradient(boxes), first_level,
                         first_level + num_levels - 1, canonical_scale,
                         canonical_level) - first_level  # [N]
  return MultiLevelLayout(
      flat=flat, per_image=per_image, grid_sizes=grid_sizes,
      offsets=jnp.asarray(offsets, jnp.int32),
      heights=jnp.asarray([g[0] for g in grid_sizes], jnp.int32),
      widths=jnp.asarray([g[1] for g in grid_sizes], jnp.int32),
      scales=jnp.asarray(scales, jnp.float32), boxes=boxes,
      batch_index=batch_index.astype(jnp.int32), levels=levels, lead=lead)


def multilevel_roi_align(features_per_level: Sequence, boxes, output_size, *,
                         canvas_size: tuple[int, int], batch_index=None, first_level: int = 2,
                         sampling_ratio: int = 2, aligned: bool = False,
                         canonical_scale: float = 224.0,
                         canonical_level: int = 4, quantize: bool = False):
  """FPN RoIAlign over a batch of images: each RoI is pooled from its own level.

  Args:
    features_per_level: L arrays [B, H_l, W_l, C], finest first; level l of
      the list is pyramid level ``first_level + l``.
    boxes: [B, R, 4] xyxy in input pixels of the padded canvas, R RoIs of
      each image; or, with ``batch_index``, [N, 4] RoIs of any images.
    output_size: int or (h, w).
    canvas_size: (H, W) of the padded network input, used to infer the scales.
    batch_index: None, or [N] int32, the image each of the N RoIs belongs to
      (RoIs packed from several images, e.g. the mask head's positives).
    quantize: RoIWarp (see ``roi_warp``): each RoI is first rounded to its
      level's feature grid.

  Returns:
    [B, R, h, w, C], or [N, h, w, C] with ``batch_index``.
  """
  _check_sampling_ratio(sampling_ratio)
  out_h, out_w = _pair(output_size)
  lay = multilevel_layout(features_per_level, boxes, canvas_size=canvas_size,
                          batch_index=batch_index, first_level=first_level,
                          canonical_scale=canonical_scale, canonical_level=canonical_level)

  def one_roi(box, lvl, img):
    return _sample_points(img * lay.per_image + lay.offsets[lvl], lay.heights[lvl],
                          lay.widths[lvl], box, lay.scales[lvl], out_h, out_w, sampling_ratio,
                          aligned, quantize)

  out = weighted_gather(lay.flat, *jax.vmap(one_roi)(lay.boxes, lay.levels, lay.batch_index))
  return out.reshape(lay.lead + out.shape[1:])
