"""Box ops, anchors, NMS and mask pasting against torchvision's outputs and
brute-force references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax.ops import anchors as anchor_ops
from mrcnn_jax.ops import boxes as box_ops
from mrcnn_jax.ops.masks import paste_masks
from mrcnn_jax.ops.nms import batched_nms, nms, nms_batch


def test_format_round_trips():
  b = jnp.asarray([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 0.0, 5.0]])
  np.testing.assert_allclose(box_ops.xywh_to_xyxy(box_ops.xyxy_to_xywh(b)), b)
  np.testing.assert_allclose(box_ops.cxcywh_to_xyxy(box_ops.xyxy_to_cxcywh(b)), b)
  np.testing.assert_allclose(box_ops.xyxy_to_xywh(b)[0], [1, 2, 10, 20])
  np.testing.assert_allclose(box_ops.area(b), [200.0, 0.0])


def test_clip_to_true_size_per_image():
  b = jnp.asarray([[[-5.0, -5.0, 100.0, 100.0]], [[-5.0, -5.0, 100.0, 100.0]]])
  sizes = jnp.asarray([[50, 60], [30, 20]])
  out = box_ops.clip(b, sizes[:, None, :])
  np.testing.assert_allclose(out[:, 0], [[0, 0, 60, 50], [0, 0, 20, 30]])


def test_pairwise_iou():
  a = jnp.asarray([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
  b = jnp.asarray([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
  iou = box_ops.pairwise_iou(a, b)
  np.testing.assert_allclose(iou, [[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]], rtol=1e-6)


def test_coder_matches_torchvision(tv_ref):
  w = (10.0, 10.0, 5.0, 5.0)
  enc = box_ops.encode(jnp.asarray(tv_ref["coder/tgt"]), jnp.asarray(tv_ref["coder/ref"]), w)
  np.testing.assert_allclose(enc, tv_ref["coder/enc"], rtol=1e-5, atol=1e-5)
  dec = box_ops.decode(jnp.asarray(tv_ref["coder/deltas"]), jnp.asarray(tv_ref["coder/ref"]), w)
  np.testing.assert_allclose(dec, tv_ref["coder/dec"], rtol=1e-5, atol=1e-3)
  assert np.isfinite(np.asarray(dec)).all()  # exp clip


def test_coder_round_trip():
  rng = np.random.default_rng(1)
  ref = jnp.asarray(np.tile(rng.uniform(0, 50, (20, 2)), (1, 2)) + [0, 0, 10, 20], jnp.float32)
  tgt = ref + jnp.asarray(rng.uniform(-3, 3, (20, 4)), jnp.float32)
  back = box_ops.decode(box_ops.encode(tgt, ref, (10, 10, 5, 5)), ref, (10, 10, 5, 5))
  np.testing.assert_allclose(back, tgt, atol=1e-3)


def test_anchors_match_torchvision(tv_ref):
  grids = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
  ours = anchor_ops.fpn_anchors((800, 1216), grids, ((32,), (64,), (128,), (256,), (512,)),
                                ((0.5, 1.0, 2.0),) * 5)
  np.testing.assert_array_equal(np.concatenate(ours), tv_ref["anchors/all"])
  # the P6 stride quirk: 800 // 13 = 61
  assert anchor_ops.level_strides((800, 1216), (13, 19)) == (61, 64)


# Each NMS method, the tiled one also with tiles far smaller than the input
# (many tiles, suppression across tile boundaries).
METHODS = [dict(method="sequential"), dict(method="tiled"), dict(method="tiled", tile=7)]


@pytest.mark.parametrize("kw", METHODS, ids=["sequential", "tiled", "tiled7"])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision_and_reference(tv_ref, thr, kw):
  boxes = jnp.asarray(tv_ref["nms/boxes"])
  scores = jnp.asarray(tv_ref["nms/scores"])
  classes = jnp.asarray(tv_ref["nms/classes"])
  n = boxes.shape[0]
  idx, valid = jax.jit(lambda b, s: nms(b, s, thr, n, **kw))(boxes, scores)
  kept = np.asarray(idx)[np.asarray(valid)]
  np.testing.assert_array_equal(kept, tv_ref[f"nms/keep_{thr}"])
  np.testing.assert_array_equal(kept, nms_reference(tv_ref["nms/boxes"], tv_ref["nms/scores"], thr))
  idx, valid = jax.jit(lambda b, s, c: batched_nms(b, s, c, thr, n, **kw))(boxes, scores, classes)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], tv_ref[f"bnms/keep_{thr}"])


def test_tiled_nms_equals_greedy_on_long_suppression_chains():
  """Worst cases for the tiled method's fixed point: chains of boxes each
  overlapping the next above the threshold but not the one after (whether a
  box survives flips along the whole chain), equal scores (ties by index),
  classes, invalid boxes, and a batch under vmap with max_output reached in
  the middle of a tile."""
  rng = np.random.default_rng(0)
  b, n = 3, 90
  x = np.arange(n, dtype=np.float32) * 3.0  # 10-px boxes 3 px apart: IoU(i, i+1) = 0.54
  chain = np.stack([x, np.zeros(n), x + 10, np.full(n, 10.0)], 1)
  boxes = np.stack([chain,
                    chain[rng.permutation(n)],
                    np.concatenate([rng.uniform(0, 60, (n, 2)), np.zeros((n, 2))], 1)])
  boxes[2, :, 2:] = boxes[2, :, :2] + rng.uniform(5, 30, (n, 2))
  boxes = boxes.astype(np.float32)
  scores = np.stack([np.linspace(1, 0.1, n), rng.uniform(0, 1, n),
                     np.round(rng.uniform(0, 1, n), 1)]).astype(np.float32)  # ties in row 2
  classes = rng.integers(0, 3, (b, n)).astype(np.int32)
  valid = rng.uniform(0, 1, (b, n)) > 0.15
  for thr, k, cls in [(0.5, n, None), (0.3, 11, classes)]:
    expect = []
    for i in range(b):
      sel = np.flatnonzero(valid[i])
      ref = nms_reference(boxes[i][sel], scores[i][sel], thr,
                          None if cls is None else cls[i][sel])
      expect.append(sel[ref][:k])
    for kw in METHODS:
      c = jnp.zeros((b, n), jnp.int32) if cls is None else jnp.asarray(cls)
      fn = jax.jit(jax.vmap(lambda bb, s, cc, v: nms(
          bb, s, thr, k, valid=v, classes=None if cls is None else cc, **kw)))
      idx, out_valid = fn(boxes, scores, c, valid)
      for i in range(b):
        got = np.asarray(idx[i])[np.asarray(out_valid[i])]
        np.testing.assert_array_equal(got, expect[i], err_msg=f"{kw} thr {thr} image {i}")


@pytest.mark.parametrize("kw", METHODS, ids=["sequential", "tiled", "tiled7"])
def test_nms_max_output_and_valid_mask(kw):
  rng = np.random.default_rng(3)
  ctr = rng.uniform(0, 100, (50, 2))
  boxes = np.concatenate([ctr - 5, ctr + 5], 1).astype(np.float32)
  scores = rng.uniform(0, 1, 50).astype(np.float32)
  valid = rng.uniform(0, 1, 50) > 0.3
  ref = [i for i in nms_reference(boxes[valid], scores[valid], 0.5)]
  ref = np.flatnonzero(valid)[ref]
  idx, out_valid = nms(jnp.asarray(boxes), jnp.asarray(scores), 0.5, 5, valid=jnp.asarray(valid),
                       **kw)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(out_valid)], ref[:5])
  # more slots than survivors: padding is invalid
  idx, out_valid = nms(jnp.asarray(boxes), jnp.asarray(scores), 0.5, 60, valid=jnp.asarray(valid),
                       **kw)
  assert int(out_valid.sum()) == len(ref)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(out_valid)], ref)
  # nothing valid
  idx, out_valid = nms(jnp.asarray(boxes), jnp.asarray(scores), 0.5, 4, valid=jnp.zeros(50, bool),
                       **kw)
  assert not bool(out_valid.any())


@pytest.mark.parametrize("per_image,method", [(False, None), (True, None), (False, "tiled")])
def test_nms_batch_is_nms_of_each_image(per_image, method):
  rng = np.random.default_rng(4)
  ctr = rng.uniform(0, 100, (3, 40, 2))
  boxes = np.concatenate([ctr - 8, ctr + 8], -1).astype(np.float32)
  scores = rng.uniform(0, 1, (3, 40)).astype(np.float32)
  valid = rng.uniform(0, 1, (3, 40)) > 0.2
  classes = rng.integers(1, 4, (3, 40)).astype(np.int32)
  for cls in (None, classes):
    idx, out_valid = jax.jit(lambda b, s, v, c: nms_batch(b, s, 0.5, 12, v, classes=c,
                                                          per_image=per_image, method=method))(
        boxes, scores, valid, cls)
    for i in range(3):
      ref = nms(jnp.asarray(boxes[i]), jnp.asarray(scores[i]), 0.5, 12,
                valid=jnp.asarray(valid[i]), classes=None if cls is None else jnp.asarray(cls[i]))
      np.testing.assert_array_equal(idx[i], ref[0])
      np.testing.assert_array_equal(out_valid[i], ref[1])
  if method is not None:  # the method reaches nms: another program from the sequential one
    programs = [str(jax.make_jaxpr(lambda b, s, v: nms_batch(b, s, 0.5, 12, v, method=m))(
        boxes, scores, valid)) for m in (method, "sequential")]
    assert programs[0] != programs[1]


def test_paste_masks_matches_torchvision(tv_ref):
  out = paste_masks(jnp.asarray(tv_ref["paste/masks"]), jnp.asarray(tv_ref["paste/boxes"]), (60, 80))
  np.testing.assert_allclose(out, tv_ref["paste/out"], atol=1e-5)


def test_paste_masks_degenerate():
  m = jnp.ones((3, 28, 28))
  boxes = jnp.asarray([[0, 0, 0, 0], [-50, -50, -10, -10], [70, 50, 200, 200]], jnp.float32)
  out = np.asarray(paste_masks(m, boxes, (60, 80)))
  assert out.shape == (3, 60, 80) and np.isfinite(out).all()
  assert out[1].sum() == 0.0


def test_paste_masks_numpy_matches(tv_ref):
  from mrcnn_jax.client import paste_masks
  out = paste_masks(tv_ref["paste/masks"], tv_ref["paste/boxes"], (60, 80), threshold=None)
  np.testing.assert_allclose(out, tv_ref["paste/out"], atol=1e-5)


def nms_reference(boxes, scores, iou_threshold, classes=None):
  """Brute-force greedy NMS in numpy, written independently of ops.nms.
  Returns kept indices in descending score order."""
  boxes = np.asarray(boxes, np.float64)
  scores = np.asarray(scores)
  order = np.argsort(-scores, kind="stable")
  kept = []
  for i in order:
    ok = True
    for j in kept:
      if classes is not None and classes[i] != classes[j]:
        continue
      lt = np.maximum(boxes[i, :2], boxes[j, :2])
      rb = np.minimum(boxes[i, 2:], boxes[j, 2:])
      wh = np.maximum(rb - lt, 0)
      inter = wh[0] * wh[1]
      a = lambda b: max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
      union = a(boxes[i]) + a(boxes[j]) - inter
      iou = inter / union if union > 0 else 0.0
      if iou > iou_threshold:
        ok = False
        break
    if ok:
      kept.append(int(i))
  return kept
