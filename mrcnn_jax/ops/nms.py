"""Greedy non-maximum suppression with static output size.

Shape shorthand: N candidate boxes, K kept (``max_output``).

``nms`` keeps exactly the set that the classic greedy algorithm keeps
(torchvision.ops.nms): visit boxes in descending score order, keep a box
unless it overlaps an already kept box with IoU > threshold. Output is the
first ``max_output`` kept indices in score order, padded, plus a valid mask.

Two implementations keep the same set (both are tested against
torchvision's and an independent reference), chosen by ``method``:

* ``"sequential"``: boxes are sorted once; a ``while_loop`` visits them in
  order and stops early once ``max_output`` boxes are kept or the
  candidates run out. Each step compares one box against the kept set only,
  so memory is O(N + K) and the work O(N * K) at worst. Cheap on a CPU, but
  one loop iteration per box: on a GPU each iteration is a few kernel
  launches and a device-to-host read of the loop condition, and 5 levels x
  2000 proposals made NMS 65% of an R50-FPN train step on an H200.
* ``"tiled"``: the sorted boxes are cut into tiles of at most ``tile``
  boxes, visited in order. A tile's boxes are first suppressed by the kept
  boxes of all earlier tiles (one [N, T] IoU comparison), then among
  themselves by iterating ``keep = alive & ~any_{j < i}(keep_j & overlap_ji)``
  to its fixed point. Entry i of that map depends only on entries j < i, so
  after m iterations the first m entries are final and the fixed point is
  unique: it is exactly the greedy decision. It converges in as many
  iterations as the longest chain of suppressions whose outcome flips
  (a few for proposals), so the loop runs about N / T * (1 + a few) times
  instead of N. Work O(N^2) in [N, T] blocks, which a GPU does in parallel.
* ``"auto"`` (default): sequential on the CPU, tiled elsewhere (GPU, TPU),
  by ``lax.platform_dependent``, so an artifact exported for several
  platforms runs the right one on each.

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
        classes=None, *, method: str = "auto", tile: int = 512):
  """Greedy NMS with a fixed number of outputs.

  Args:
    boxes: [N, 4] xyxy.
    scores: [N]; higher is better.
    iou_threshold: a box is suppressed by a kept box when IoU > threshold.
    max_output: K, the static number of outputs.
    valid: optional [N] bool; invalid boxes are never kept.
    classes: optional [N] int; if given, boxes only suppress boxes of the same
      class (torchvision's ``batched_nms``).
    method: ``"auto"``, ``"sequential"`` or ``"tiled"`` (module docstring);
      all keep the same boxes.
    tile: the tiled method's largest tile (boxes compared at once).

  Returns:
    (indices [K] int32 into the inputs, in descending score order, padded with
    0; valid [K] bool).
  """
  n = boxes.shape[0]
  if valid is None:
    valid = jnp.ones((n,), bool)
  if n == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  if method not in ("auto", "sequential", "tiled"):
    raise ValueError(f"nms: method must be 'auto', 'sequential' or 'tiled', got {method!r}")
  if method == "auto":
    # Chosen by the platform the program is compiled for, not the one it is
    # traced on: an export lowered for cpu and cuda carries both.
    def run(m):
      return lambda b, s, v: nms(b, s, iou_threshold, max_output, v, classes, method=m,
                                 tile=tile)
    return jax.lax.platform_dependent(boxes, scores, valid, cpu=run("sequential"),
                                      default=run("tiled"))
  # Invalid candidates sort last; a stable sort keeps index order for ties.
  sort_key = jnp.where(valid, -scores.astype(jnp.float32), jnp.inf)
  order = jnp.argsort(sort_key, stable=True).astype(jnp.int32)
  sboxes = boxes[order].astype(jnp.float32)
  svalid = valid[order]
  sclasses = None if classes is None else classes[order].astype(jnp.int32)
  if method == "tiled":
    keep = _tiled_keep(sboxes, svalid, sclasses, iou_threshold, max_output, tile)
    count = jnp.minimum(jnp.sum(keep, dtype=jnp.int32), max_output)
    (pos,) = jnp.nonzero(keep, size=max_output, fill_value=0)  # first K kept, in order
    out_valid = jnp.arange(max_output) < count
    return jnp.where(out_valid, order[pos], 0), out_valid
  return _sequential(order, sboxes, svalid, sclasses, iou_threshold, max_output)


def _sequential(order, sboxes, svalid, sclasses, iou_threshold, max_output):
  n = sboxes.shape[0]
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
      kept_classes = kept_classes.at[slot].set(sclasses[i], mode="drop")
    return i + 1, count + keep.astype(jnp.int32), kept_boxes, kept_classes, kept_idx

  _, count, _, _, kept_idx = jax.lax.while_loop(
      cond, body, (jnp.int32(0), jnp.int32(0), kept_boxes, kept_classes, kept_idx))
  out_valid = jnp.arange(max_output) < count
  return jnp.where(out_valid, kept_idx, 0), out_valid


def _tiled_keep(sboxes, svalid, sclasses, iou_threshold, max_output, tile):
  """[N] bool: which of the score-sorted boxes greedy NMS keeps (exact up to
  the tile where ``max_output`` kept is reached; later tiles stay False)."""
  n = sboxes.shape[0]
  num_tiles = -(-n // tile)
  t = -(-n // num_tiles)  # tiles as even as possible: padding < num_tiles
  pad = num_tiles * t - n
  sboxes = jnp.pad(sboxes, ((0, pad), (0, 0)))
  svalid = jnp.pad(svalid, (0, pad))  # padding is never kept
  sclasses = None if sclasses is None else jnp.pad(sclasses, (0, pad))

  def overlap(a, b, a_cls, b_cls):  # [A, 4], [B, 4] -> [A, B]: a would suppress b
    # The IoU arithmetic of the sequential method (area(a) + area(b) - inter
    # is symmetric in IEEE), so both methods compare the same numbers.
    m = box_ops.pairwise_iou(a, b) > iou_threshold
    return m if a_cls is None else m & (a_cls[:, None] == b_cls[None, :])

  before = jnp.arange(t)[:, None] < jnp.arange(t)[None, :]  # j (row) precedes i (column)

  def tile_cond(state):
    k, keep, count = state
    first = svalid[jnp.minimum(k * t, n - 1)]  # invalid boxes sort last: all done
    return (k < num_tiles) & (count < max_output) & first

  def tile_body(state):
    k, keep, count = state
    start = k * t
    tb = jax.lax.dynamic_slice_in_dim(sboxes, start, t)
    tv = jax.lax.dynamic_slice_in_dim(svalid, start, t)
    tc = None if sclasses is None else jax.lax.dynamic_slice_in_dim(sclasses, start, t)
    # Suppressed by a box kept in an earlier tile (keep is False from here on).
    alive = tv & ~jnp.any(overlap(sboxes, tb, sclasses, tc) & keep[:, None], axis=0)
    within = overlap(tb, tb, tc, tc) & before

    def step(k_tile):
      return alive & ~jnp.any(within & k_tile[:, None], axis=0)

    def changed(pair):
      return jnp.any(pair[0] != pair[1])

    _, k_tile = jax.lax.while_loop(changed, lambda pair: (pair[1], step(pair[1])),
                                   (alive, step(alive)))
    keep = jax.lax.dynamic_update_slice_in_dim(keep, k_tile, start, axis=0)
    return k + 1, keep, count + jnp.sum(k_tile, dtype=jnp.int32)

  _, keep, _ = jax.lax.while_loop(
      tile_cond, tile_body, (jnp.int32(0), jnp.zeros(num_tiles * t, bool), jnp.int32(0)))
  return keep[:n]


def batched_nms(boxes, scores, classes, iou_threshold: float, max_output: int,
                valid=None, *, method: str = "auto", tile: int = 512):
  """Class-aware NMS: boxes of different classes never suppress each other."""
  return nms(boxes, scores, iou_threshold, max_output, valid=valid,
             classes=classes, method=method, tile=tile)


def nms_per_image(boxes, scores, iou_threshold: float, max_output: int, valid,
                  classes=None, *, method: str = "sequential"):
  """``nms`` on each image of a batch: boxes [B, N, 4] xyxy, scores, valid
  (and optionally classes) [B, N] -> (indices [B, K], valid [B, K]).

  One ``while_loop`` per image (B is static) instead of a ``vmap`` of one.
  A vmapped loop runs until the slowest image is done, selects every state
  update per image, and turns each read and write of one box into a batched
  gather / scatter; separate loops stay plain dynamic reads and writes of
  one row, which ONNX converters translate (``mrcnn_jax.export``). The
  method defaults to "sequential", not "auto": "auto" picks its method with
  ``lax.platform_dependent``, which has no ONNX form, and ONNX runtimes
  run it on the CPU, where the sequential loop is the faster one.
  """
  outs = [nms(boxes[i], scores[i], iou_threshold, max_output, valid=valid[i],
              classes=None if classes is None else classes[i], method=method)
          for i in range(boxes.shape[0])]
  return jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs])


def nms_batch(boxes, scores, iou_threshold: float, max_output: int, valid, classes=None, *,
              per_image: bool = False, method: str | None = None):
  """``nms`` over a batch: boxes [B, N, 4] xyxy, scores, valid (and
  optionally classes) [B, N] -> (indices [B, K], valid [B, K]). One
  ``vmap``ped loop for the batch (training, evaluation, predict), or with
  ``per_image`` one loop per image (``nms_per_image``: the ONNX export).
  ``method``: ``nms``'s; None for each form's default ("auto" vmapped,
  "sequential" per image). The model calls NMS through this function only
  (``ops.postprocess``), so binding ``method`` here picks it for the whole
  model (``scripts/benchmark_train.py --nms``)."""
  if per_image:
    return nms_per_image(boxes, scores, iou_threshold, max_output, valid, classes=classes,
                         method=method or "sequential")
  return jax.vmap(lambda b, s, v, c: nms(b, s, iou_threshold, max_output, valid=v, classes=c,
                                         method=method or "auto"))(
      boxes, scores, valid, classes)
