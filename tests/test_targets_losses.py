"""Target assignment, sampling counts, mask targets against a direct
computation, and the losses (hand values, class-only mask gradient, pinned
values under a fixed seed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax.ops import boxes as box_ops
from mrcnn_jax.ops import losses as L
from mrcnn_jax.ops import targets as T


def test_match_thresholds_and_low_quality():
  iou = jnp.asarray([[0.8, 0.1], [0.5, 0.2], [0.1, 0.25], [0.0, 0.0]])
  gt_valid = jnp.asarray([True, True])
  labels, idx, _ = T.match(iou, gt_valid, 0.7, 0.3, allow_low_quality=False)
  np.testing.assert_array_equal(labels, [1, -1, 0, 0])
  labels, idx, _ = T.match(iou, gt_valid, 0.7, 0.3, allow_low_quality=True)
  # anchor 2 is gt 1's best (0.25): promoted, matched to its own argmax (gt 1)
  np.testing.assert_array_equal(labels, [1, -1, 1, 0])
  assert int(idx[2]) == 1
  # an invalid gt never matches; no valid gt -> all background
  labels, _, _ = T.match(iou, jnp.asarray([False, False]), 0.7, 0.3, True)
  np.testing.assert_array_equal(labels, [0, 0, 0, 0])


@pytest.mark.parametrize("num_pos,num_neg,exp_pos,exp_neg", [
    (200, 1000, 128, 128), (100, 1000, 100, 156), (10, 1000, 10, 246), (100, 20, 100, 20),
    (0, 5, 0, 5)])
def test_sampling_counts(num_pos, num_neg, exp_pos, exp_neg):
  labels = jnp.concatenate([jnp.ones(num_pos, jnp.int32), jnp.zeros(num_neg, jnp.int32),
                            -jnp.ones(7, jnp.int32)])
  order, is_pos, sampled = T.sample_balanced(labels, 256, 0.5, jax.random.PRNGKey(0))
  assert int(is_pos.sum()) == exp_pos
  assert int((sampled & ~is_pos).sum()) == exp_neg
  o = np.asarray(order)[np.asarray(sampled)]
  assert len(set(o.tolist())) == len(o)  # no duplicates
  assert (np.asarray(labels)[o] >= 0).all()  # never an ignored one
  assert (np.asarray(labels)[np.asarray(order)[np.asarray(is_pos)]] == 1).all()
  # positives first
  k = int(is_pos.sum())
  assert bool(is_pos[:k].all())


def test_sampling_determinism():
  labels = (jnp.arange(500) % 3 == 0).astype(jnp.int32)
  a = T.sample_balanced(labels, 64, 0.25, jax.random.PRNGKey(1))[0]
  b = T.sample_balanced(labels, 64, 0.25, jax.random.PRNGKey(1))[0]
  c = T.sample_balanced(labels, 64, 0.25, jax.random.PRNGKey(2))[0]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_rpn_targets_counts():
  xs = jnp.arange(0, 64, 4.0)
  anchors = jnp.stack(jnp.meshgrid(xs, xs), -1).reshape(-1, 2)
  anchors = jnp.concatenate([anchors - 8, anchors + 8], -1)
  gt = jnp.asarray([[10.0, 10.0, 30.0, 26.0], [0, 0, 0, 0]])
  t = T.rpn_targets(anchors, gt, jnp.asarray([True, False]), jax.random.PRNGKey(0),
                    num_samples=32, positive_fraction=0.5)
  lab = np.asarray(t["labels"])
  assert 1 <= (lab == 1).sum() <= 16
  assert (lab >= 0).sum() == 32
  iou = np.asarray(box_ops.pairwise_iou(anchors, gt[:1]))[:, 0]
  assert (lab[iou.argmax()] == 1)  # best anchor is positive (low-quality rule)
  pos = lab == 1
  back = box_ops.decode(t["deltas"][pos], anchors[pos])
  np.testing.assert_allclose(back, np.repeat(gt[:1], pos.sum(), 0), atol=1e-3)


@pytest.mark.parametrize("num_samples", [32, 400])
def test_rpn_targets_sampled_rows_are_the_dense_targets_at_the_sample(num_samples):
  """``sampled_index`` / ``sampled_labels`` / ``sampled_deltas`` (what the
  losses read) scattered back give the dense ``labels`` and ``deltas``; with
  more samples than anchors (256 here) the rows beyond the sample are -1."""
  xs = jnp.arange(0, 64, 4.0)
  anchors = jnp.stack(jnp.meshgrid(xs, xs), -1).reshape(-1, 2)
  anchors = jnp.concatenate([anchors - 8, anchors + 8], -1)
  gt = jnp.asarray([[10.0, 10.0, 30.0, 26.0], [34.0, 30.0, 60.0, 62.0]])
  t = T.rpn_targets(anchors, gt, jnp.asarray([True, True]), jax.random.PRNGKey(3),
                    num_samples=num_samples, positive_fraction=0.5)
  idx, lab = np.asarray(t["sampled_index"]), np.asarray(t["sampled_labels"])
  assert idx.shape == lab.shape == (num_samples,)
  used = lab >= 0
  assert used.sum() == int(t["num_sampled"]) <= min(num_samples, 256)
  assert used[:used.sum()].all()  # the sample first, then the unused rows
  assert len(set(idx[used])) == used.sum()  # no anchor twice
  dense = np.full(anchors.shape[0], -1)
  dense[idx[used]] = lab[used]
  np.testing.assert_array_equal(dense, t["labels"])
  np.testing.assert_allclose(np.asarray(t["sampled_deltas"])[used],
                             np.asarray(t["deltas"])[idx[used]], rtol=1e-6)
  assert (lab[:(lab == 1).sum()] == 1).all()  # positives first


def test_roi_targets_include_gt():
  props = jnp.asarray([[0.0, 0.0, 5.0, 5.0]] * 10)
  gt = jnp.asarray([[10.0, 10.0, 30.0, 40.0], [40.0, 5.0, 60.0, 20.0], [0, 0, 0, 0]])
  t = T.roi_targets(props, jnp.ones(10, bool), gt, jnp.asarray([2, 3, 0]),
                    jnp.asarray([True, True, False]), jax.random.PRNGKey(0),
                    num_samples=8, positive_fraction=0.5)
  pos = np.asarray(t["is_pos"])
  assert pos.sum() == 2 and pos[:2].all()  # both gts, first
  assert sorted(np.asarray(t["labels"])[pos].tolist()) == [2, 3]
  np.testing.assert_allclose(np.asarray(t["deltas"])[pos], 0.0, atol=1e-5)
  assert (np.asarray(t["labels"])[~pos] == 0).all()
  assert np.asarray(t["valid"]).sum() == 8


def direct_mask_target(full_mask, roi, m):
  """Sample the full-resolution mask at each target bin's centre (bilinear,
  pixel centres at +0.5) and threshold: the definition, computed directly."""
  x1, y1, x2, y2 = roi
  ys = y1 + (np.arange(m) + 0.5) * (y2 - y1) / m - 0.5
  xs = x1 + (np.arange(m) + 0.5) * (x2 - x1) / m - 0.5
  h, w = full_mask.shape
  out = np.zeros((m, m))
  for i, y in enumerate(ys):
    for j, x in enumerate(xs):
      y0, x0 = int(np.floor(y)), int(np.floor(x))
      fy, fx = y - y0, x - x0
      v = 0.0
      for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
          yy, xx = y0 + dy, x0 + dx
          if 0 <= yy < h and 0 <= xx < w:
            v += wy * wx * full_mask[yy, xx]
      out[i, j] = v
  return (out >= 0.5).astype(np.float32)


def crop_like_pipeline(full_mask, box, s):
  """The pipeline's crop: bin k centred at x1 + (k + 0.5) * w / s."""
  return direct_mask_target(full_mask, box, s)


def test_mask_targets_against_direct_computation():
  h = w = 96
  yy, xx = np.mgrid[:h, :w]
  full = (((yy - 50) ** 2 + (xx - 40) ** 2) < 25 ** 2).astype(np.float32)  # a disc
  box = np.array([15.0, 25.0, 65.0, 75.0], np.float32)  # its tight box
  crop = crop_like_pipeline(full, box, 64)
  rois = np.array([box, [20.0, 30.0, 60.0, 70.0], [5.0, 40.0, 50.0, 90.0]], np.float32)
  got = np.asarray(T.mask_targets(jnp.asarray(rois), jnp.zeros(3, jnp.int32),
                                  jnp.asarray(box[None]), jnp.asarray(crop[None]), 28))
  for r in range(3):
    want = direct_mask_target(full, rois[r], 28)
    agree = (got[r] == want).mean()
    assert agree >= 0.97, (r, agree)


def test_loss_primitives():
  x = jnp.asarray([-3.0, -0.05, 0.0, 0.05, 3.0])
  np.testing.assert_allclose(L.smooth_l1(x, 0.1), [2.95, 0.0125, 0.0, 0.0125, 2.95], rtol=1e-6)
  logits = jnp.asarray([-50.0, -1.0, 0.0, 2.0, 50.0])
  t = jnp.asarray([0.0, 1.0, 1.0, 0.0, 1.0])
  naive = -(t * jnp.log(jax.nn.sigmoid(logits)) + (1 - t) * jnp.log1p(-jax.nn.sigmoid(logits) + 1e-30))
  np.testing.assert_allclose(L.sigmoid_bce(logits, t)[1:4], naive[1:4], rtol=1e-5)
  assert np.isfinite(np.asarray(L.sigmoid_bce(logits, t))).all()


def test_mask_loss_only_gt_class_gets_gradient():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((2, 4, 4, 3)), jnp.float32)
  labels = jnp.asarray([2, 1])
  targets = jnp.asarray(rng.uniform(size=(2, 4, 4)) > 0.5, jnp.float32)
  valid = jnp.asarray([True, False])
  img = jnp.asarray([0, 0])
  g = jax.grad(lambda l: L.mask_loss(l, labels, targets, valid, img, 1))(logits)
  g = np.abs(np.asarray(g))
  assert g[0, ..., 2].sum() > 0
  assert g[0, ..., :2].sum() == 0 and g[1].sum() == 0
  # no positives -> 0, finite
  assert float(L.mask_loss(logits, labels, targets, jnp.zeros((2,), bool), img, 1)) == 0.0


def test_mask_loss_is_a_per_image_mean_over_packed_rois():
  """Image 0 has two mask RoIs, image 1 one, image 2 none: the loss is the
  mean over images of each image's mean RoI loss (0 for image 2)."""
  logits = jnp.asarray([1.0, -2.0, 0.5, 3.0]).reshape(4, 1, 1, 1)
  targets = jnp.asarray([1.0, 0.0, 0.0, 1.0]).reshape(4, 1, 1)
  valid = jnp.asarray([True, True, True, False])
  img = jnp.asarray([0, 1, 0, 2])
  per = np.asarray(L.sigmoid_bce(logits[:, 0, 0, 0], targets[:, 0, 0]))
  want = ((per[0] + per[2]) / 2 + per[1] + 0.0) / 3
  got = L.mask_loss(logits, jnp.zeros(4, jnp.int32), targets, valid, img, 3)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pack_positive_rois_round_robin():
  is_pos = jnp.asarray([[True, True, True, False],
                        [True, False, False, False],
                        [False, False, False, False]])
  img, roi, valid = T.pack_positive_rois(is_pos, 4)
  # round-robin: image 0's and 1's first positives, then image 0's second ...
  assert img.tolist() == [0, 1, 0, 0] and roi.tolist() == [0, 0, 1, 2]
  assert valid.tolist() == [True] * 4
  img, roi, valid = T.pack_positive_rois(is_pos, 3)  # one positive left out
  assert list(zip(img.tolist(), roi.tolist())) == [(0, 0), (1, 0), (0, 1)]
  img, roi, valid = T.pack_positive_rois(is_pos, 14)  # more slots than RoIs
  assert valid.tolist() == [True] * 4 + [False] * 10 and img.shape == (14,)


def test_empty_image_losses_finite():
  rpn = L.rpn_losses(jnp.zeros((1, 10)), jnp.zeros((1, 10, 4)), -jnp.ones((1, 10), jnp.int32),
                     jnp.zeros((1, 10, 4)))
  box = L.box_losses(jnp.zeros((1, 4, 3)), jnp.zeros((1, 4, 3, 4)), jnp.zeros((1, 4), jnp.int32),
                     jnp.zeros((1, 4, 4)), jnp.zeros((1, 4), bool), jnp.zeros((1, 4), bool))
  for v in rpn + box:
    assert np.isfinite(float(v)) and float(v) == 0.0
