"""RoIAlign: hand-computed values, torchvision's values and gradients,
multi-level assignment, and degenerate boxes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax.ops.roi_align import (assign_levels, multilevel_roi_align, roi_align,
                                     weighted_gather)


def arange_map():
  return jnp.arange(25, dtype=jnp.float32).reshape(5, 5, 1)  # value = 5y + x


def test_hand_computed_5x5():
  f = arange_map()
  # A 1x1 output over the whole map with one sample: the centre (2.5, 2.5)
  # with aligned=False -> bilinear between 12, 13, 17, 18 -> 15.
  out = roi_align(f, jnp.array([[0.0, 0.0, 5.0, 5.0]]), 1, sampling_ratio=1, aligned=False)
  np.testing.assert_allclose(out[0, 0, 0, 0], 15.0, rtol=1e-6)
  # aligned=True shifts by half a pixel: centre at (2, 2) -> exactly 12.
  out = roi_align(f, jnp.array([[0.0, 0.0, 5.0, 5.0]]), 1, sampling_ratio=1, aligned=True)
  np.testing.assert_allclose(out[0, 0, 0, 0], 12.0, rtol=1e-6)
  # 2x2 bins of a box [1, 1, 3, 3] (aligned=True, one sample per bin): bin
  # centres at 1.5 - 0.5 + {0, 1} = {1, 2} in both axes -> f[1,1], f[1,2], ...
  out = roi_align(f, jnp.array([[1.0, 1.0, 3.0, 3.0]]), 2, sampling_ratio=1, aligned=True)
  np.testing.assert_allclose(out[0, :, :, 0], [[6.0, 7.0], [11.0, 12.0]], rtol=1e-6)
  # sampling_ratio 2 averages four points: the value is linear, so the mean
  # equals the value at the bin centre.
  out = roi_align(f, jnp.array([[1.0, 1.0, 3.0, 3.0]]), 2, sampling_ratio=2, aligned=True)
  np.testing.assert_allclose(out[0, :, :, 0], [[6.0, 7.0], [11.0, 12.0]], rtol=1e-6)
  # Clamping at the border: the RoI height is floored at 1, so the one sample
  # sits at y = 5.0 = H, still inside the margin, and reads row 4 only.
  out = roi_align(f, jnp.array([[0.0, 4.5, 1.0, 5.0]]), 1, sampling_ratio=1, aligned=False)
  np.testing.assert_allclose(out[0, 0, 0, 0], 20.5, rtol=1e-6)  # x=0.5 between 20 and 21
  # Wholly outside the map (beyond the 1-pixel margin) -> 0.
  out = roi_align(f, jnp.array([[10.0, 10.0, 12.0, 12.0]]), 2, sampling_ratio=2)
  np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sr", [1, 2, 3, 4])
def test_matches_torchvision_values_and_grads(tv_ref, scale, aligned, sr):
  feats = jnp.asarray(tv_ref["roi_align/features"])
  boxes = jnp.asarray(tv_ref[f"roi_align/boxes_s{scale}"])
  key = f"roi_align/s{scale}_a{int(aligned)}_r{sr}"
  fn = lambda f: roi_align(f, boxes, (5, 4), spatial_scale=scale, sampling_ratio=sr,
                           aligned=aligned)
  out = fn(feats)
  np.testing.assert_allclose(out, tv_ref[key + "_out"], atol=1e-4, rtol=1e-4)
  cot = jnp.asarray(tv_ref[key + "_cot"])
  grad = jax.grad(lambda f: jnp.sum(fn(f) * cot))(feats)
  np.testing.assert_allclose(grad, tv_ref[key + "_grad"], atol=1e-4, rtol=1e-4)


def test_multilevel_matches_torchvision(tv_ref):
  levels = [jnp.asarray(tv_ref[f"msroi/level{i}"]) for i in range(4)]
  boxes = jnp.asarray(tv_ref["msroi/boxes"])
  out = jax.jit(lambda l, b: multilevel_roi_align(l, b, 7, canvas_size=(256, 320)))(levels, boxes)
  np.testing.assert_allclose(out, tv_ref["msroi/out"], atol=1e-4, rtol=1e-4)


def test_multilevel_equals_single_level_on_assigned_level():
  rng = np.random.default_rng(0)
  levels = [jnp.asarray(rng.standard_normal((1, 64 // s, 64 // s, 2)), jnp.float32)
            for s in (4, 8, 16, 32)]
  boxes = jnp.asarray([[[0, 0, 10, 10], [0, 0, 200, 200], [5, 5, 60, 40]]], jnp.float32)
  out = multilevel_roi_align(levels, boxes, 3, canvas_size=(64, 64))
  lvl = np.asarray(assign_levels(boxes))[0]
  for r in range(3):
    single = roi_align(levels[lvl[r] - 2][0], boxes[0, r:r + 1], 3,
                       spatial_scale=1.0 / 2 ** lvl[r])
    np.testing.assert_allclose(out[0, r], single[0], rtol=1e-6, atol=1e-6)


def test_level_assignment():
  boxes = jnp.asarray([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 111, 111],
                       [0, 0, 448, 448], [0, 0, 5000, 5000], [0, 0, 0, 0]], jnp.float32)
  np.testing.assert_array_equal(assign_levels(boxes), [4, 3, 2, 5, 5, 2])


def test_degenerate_boxes_no_nan():
  f = arange_map()
  boxes = jnp.asarray([[2, 2, 2, 2], [3, 1, 1, 3], [-100, -100, -50, -50],
                       [1e6, 1e6, 2e6, 2e6]], jnp.float32)
  for aligned in (False, True):
    out = roi_align(f, boxes, 3, sampling_ratio=2, aligned=aligned)
    assert out.shape == (4, 3, 3, 1)
    assert np.isfinite(np.asarray(out)).all()
    g = jax.grad(lambda x: roi_align(x, boxes, 3, aligned=aligned).sum())(f)
    assert np.isfinite(np.asarray(g)).all()
  empty = roi_align(f, jnp.zeros((0, 4)), 7)
  assert empty.shape == (0, 7, 7, 1)


def test_bad_arguments():
  with pytest.raises(ValueError, match="sampling_ratio"):
    roi_align(arange_map(), jnp.zeros((1, 4)), 2, sampling_ratio=0)
  with pytest.raises(ValueError, match=r"\[H, W, C\]"):
    roi_align(jnp.zeros((5, 5)), jnp.zeros((1, 4)), 2)
  with pytest.raises(ValueError, match=r"\[R, 4\]"):
    roi_align(arange_map(), jnp.zeros((1, 5)), 2)


def test_bfloat16_features():
  f = arange_map().astype(jnp.bfloat16)
  out = roi_align(f, jnp.array([[0.0, 0.0, 5.0, 5.0]]), 1, sampling_ratio=1)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(float(out[0, 0, 0, 0]), 15.0, rtol=1e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_weighted_gather_equals_gather_then_sum(dtype):
  """The fused pooling step against the plain gather-and-contract it replaces:
  values and both gradients, with repeated indices (the scatter-add case)."""
  rng = np.random.default_rng(0)
  flat = jnp.asarray(rng.standard_normal((30, 5)), dtype)
  idx = jnp.asarray(rng.integers(0, 30, (3, 2, 2, 8)), jnp.int32)
  idx = idx.at[0, 0, 0, :4].set(7)  # one row read four times by one bin
  w = jnp.asarray(rng.random((3, 2, 2, 8)), jnp.float32)
  cot = jnp.asarray(rng.standard_normal((3, 2, 2, 5)), jnp.float32)

  def plain(f, w):
    return jnp.einsum("...kc,...k->...c", f[idx].astype(jnp.float32), w).astype(f.dtype)

  out = weighted_gather(flat, idx, w)
  assert out.dtype == dtype and out.shape == (3, 2, 2, 5)
  tol = 1e-6 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             np.asarray(plain(flat, w), np.float32), rtol=tol, atol=tol)
  loss = lambda fn: lambda f, w: jnp.sum(fn(f, w).astype(jnp.float32) * cot)
  got = jax.grad(loss(lambda f, w: weighted_gather(f, idx, w)), argnums=(0, 1))(flat, w)
  want = jax.grad(loss(plain), argnums=(0, 1))(flat, w)
  for g, r in zip(got, want):
    assert g.dtype == r.dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                               rtol=tol, atol=tol)
  assert float(jnp.abs(got[0][7]).sum()) > 0  # the repeated row got its sum
