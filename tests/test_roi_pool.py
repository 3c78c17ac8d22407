"""RoIPool and RoIWarp: hand-computed values, torchvision's RoIPool values and
gradients (tests/data/torchvision_roi_pool.npz), the sparse table, multi-level
use, and RoIWarp == RoIAlign on the quantized RoIs."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax.ops.roi_align import (assign_levels, multilevel_roi_align, quantize_to_grid,
                                     roi_align, roi_warp)
from mrcnn_jax.ops import roi_pool as roi_pool_ops
from mrcnn_jax.ops.roi_pool import multilevel_roi_pool, range_max_table

# Jitted: eagerly, the op's many small steps take seconds.
roi_pool = jax.jit(roi_pool_ops.roi_pool, static_argnums=2)

DATA = os.path.join(os.path.dirname(__file__), "data", "torchvision_roi_pool.npz")


@pytest.fixture(scope="module")
def ref():
  return dict(np.load(DATA))


def arange_map():
  return jnp.arange(25, dtype=jnp.float32).reshape(5, 5, 1)  # value = 5y + x


def test_hand_computed_5x5():
  f = arange_map()
  # The whole map in one bin: the maximum, f[4, 4] = 24.
  out = roi_pool(f, jnp.array([[0.0, 0.0, 4.0, 4.0]]), 1)
  np.testing.assert_array_equal(out[0, :, :, 0], [[24.0]])
  # Box [0.6, 0.4, 3.4, 2.5] quantizes to x 1..3, y 0..3 (2.5 rounds away
  # from zero): a 4 x 3 RoI; 2 x 2 bins: rows {0,1} / {2,3}, columns
  # floor/ceil of 1.5: {1,2} / {2,3}; each bin's max is its bottom-right.
  out = roi_pool(f, jnp.array([[0.6, 0.4, 3.4, 2.5]]), 2)
  np.testing.assert_array_equal(out[0, :, :, 0], [[7.0, 8.0], [17.0, 18.0]])
  # spatial_scale 0.5: [2, 2, 6, 6] -> x, y 1..3.
  out = roi_pool(f, jnp.array([[2.0, 2.0, 6.0, 6.0]]), 1, spatial_scale=0.5)
  np.testing.assert_array_equal(out[0, 0, 0, 0], 18.0)
  # Wholly outside the map: every bin is empty -> 0, and no gradient.
  box = jnp.array([[10.0, 10.0, 12.0, 12.0]])
  np.testing.assert_array_equal(roi_pool(f, box, 2), 0.0)
  g = jax.grad(lambda x: roi_pool(x, box, 2).sum())(f)
  np.testing.assert_array_equal(g, 0.0)
  # Gradient: each bin's winner gets its cotangent. Box [0, 0, 2, 0]: one
  # row, columns 0..2 in two bins of 1.5 -> columns {0, 1} and {1, 2}.
  box = jnp.array([[0.0, 0.0, 2.0, 0.0]])
  g = jax.grad(lambda x: roi_pool(x, box, (1, 2)).sum())(f)
  expected = np.zeros((5, 5, 1), np.float32)
  expected[0, 1] = expected[0, 2] = 1.0  # winners f[0, 1] and f[0, 2]
  np.testing.assert_array_equal(g, expected)
  # Overlapping bins that share their winner add up (argmax backward).
  peak = jnp.zeros((5, 5, 1)).at[0, 1, 0].set(5.0)
  g = jax.grad(lambda x: (roi_pool(x, box, (1, 2)) * jnp.array([2.0, 3.0])[:, None]).sum())(
      peak)
  np.testing.assert_array_equal(g[0, :3, 0], [0.0, 5.0, 0.0])


def test_sparse_table_against_brute_force():
  rng = np.random.default_rng(0)
  f = rng.integers(0, 4, (6, 7, 2)).astype(np.float32)  # ties everywhere
  table = np.asarray(jax.jit(range_max_table)(jnp.asarray(f)))
  assert table.shape == (3, 3, 6, 7, 2)
  for k in range(3):
    for l in range(3):
      for y in range(6 - 2 ** k + 1):
        for x in range(7 - 2 ** l + 1):
          for c in range(2):
            block = f[y:y + 2 ** k, x:x + 2 ** l, c]
            yy, xx = np.unravel_index(np.argmax(block), block.shape)  # first max
            assert table[k, l, y, x, c] == (y + yy) * 7 + (x + xx)


@pytest.mark.parametrize("size", [(5, 4), (7, 7), (2, 3)])
def test_matches_torchvision_values_and_grads(ref, size):
  @jax.jit
  def value_and_grad(f, boxes, scale, cot):
    out, vjp = jax.vjp(lambda f: roi_pool_ops.roi_pool(f, boxes, size, spatial_scale=scale), f)
    return out, vjp(cot)[0]

  for name in ("rand", "ties"):
    feats = jnp.asarray(ref[f"roi_pool/features_{name}"])
    for scale in (1.0, 0.5, 0.25):
      key = f"roi_pool/{name}_s{scale}_{size[0]}x{size[1]}"
      out, grad = value_and_grad(feats, ref[f"roi_pool/boxes_{name}_s{scale}"], scale,
                                 ref[key + "_cot"])
      np.testing.assert_allclose(out, ref[key + "_out"], atol=1e-4, rtol=1e-4)
      np.testing.assert_allclose(grad, ref[key + "_grad"], atol=1e-4, rtol=1e-4)


def test_multilevel_equals_single_level_on_assigned_level():
  rng = np.random.default_rng(0)
  # Two levels (P2, P3): RoIs from 112 px on go to P3.
  levels = [jnp.asarray(rng.standard_normal((2, 64 // s, 64 // s, 3)), jnp.float32)
            for s in (4, 8)]
  boxes = jnp.asarray([[[0, 0, 10, 10], [0, 0, 200, 200], [5, 5, 60, 40]],
                       [[3, 7, 30, 9], [10, 10, 63, 63], [-8, 20, 140, 90]]], jnp.float32)

  @jax.jit
  def pooled(levels, boxes):
    batched = multilevel_roi_pool(levels, boxes, (3, 2), canvas_size=(64, 64))
    # Packed RoIs of several images (the mask head's layout).
    packed = multilevel_roi_pool(levels, boxes.reshape(6, 4), (3, 2), canvas_size=(64, 64),
                                 batch_index=jnp.asarray([0, 0, 0, 1, 1, 1]))
    return batched, packed

  out, packed = pooled(levels, boxes)
  assert out.shape == (2, 3, 3, 2, 3)
  np.testing.assert_array_equal(packed, out.reshape(6, 3, 2, 3))
  lvl = np.asarray(assign_levels(boxes, 2, 3))
  assert set(lvl.ravel()) == {2, 3}
  single = jax.jit(lambda f, b, s: roi_pool_ops.roi_pool(f, b, (3, 2), spatial_scale=s))
  for i in range(2):
    for r in range(3):
      ref = single(levels[lvl[i, r] - 2][i], boxes[i, r:r + 1], 1.0 / 2 ** lvl[i, r])
      np.testing.assert_array_equal(out[i, r], ref[0])


def test_roi_warp_is_roi_align_on_quantized_rois():
  rng = np.random.default_rng(0)
  f = jnp.asarray(rng.standard_normal((9, 11, 2)), jnp.float32)
  boxes = jnp.asarray([[1.3, 2.6, 15.2, 9.9], [0.2, 0.2, 3.7, 17.0], [5.0, 5.0, 13.0, 14.0]])
  scale = 0.5
  # The quantized corners by hand: x * 0.5 rounded half away from zero.
  q = np.asarray(quantize_to_grid(boxes, scale))
  np.testing.assert_array_equal(q, [[1, 1, 8, 5], [0, 0, 2, 9], [3, 3, 7, 7]])
  @jax.jit
  def pooled(f):
    out = []
    for aligned in (False, True):
      out.append((roi_warp(f, boxes, (4, 3), spatial_scale=scale, aligned=aligned),
                  roi_align(f, jnp.asarray(q) / scale, (4, 3), spatial_scale=scale,
                            aligned=aligned),
                  roi_align(f, boxes, (4, 3), spatial_scale=scale, aligned=aligned)))
    return out

  for warp, align_q, align in pooled(f):
    np.testing.assert_allclose(warp, align_q, rtol=0, atol=1e-6)
    assert not np.allclose(warp, align)  # and it does differ from RoIAlign on the boxes
  g = jax.jit(jax.grad(lambda x: roi_warp(x, boxes, 3, spatial_scale=scale).sum()))(f)
  assert np.isfinite(g).all() and np.abs(g).sum() > 0
  # Multi-level: each RoI quantized on its own level's grid.
  levels = [jnp.asarray(rng.standard_normal((1, 64 // s, 64 // s, 2)), jnp.float32)
            for s in (4, 8, 16, 32)]
  mboxes = jnp.asarray([[[0.7, 1.3, 10.1, 9.8], [3.3, 2.1, 200.0, 170.5]]], jnp.float32)
  out = jax.jit(lambda l: multilevel_roi_align(l, mboxes, 3, canvas_size=(64, 64),
                                                quantize=True))(levels)
  lvl = np.asarray(assign_levels(mboxes))[0]
  single = jax.jit(lambda f, b, s: roi_warp(f, b, 3, spatial_scale=s))
  for r in range(2):
    ref = single(levels[lvl[r] - 2][0], mboxes[0, r:r + 1], 1.0 / 2 ** lvl[r])
    np.testing.assert_allclose(out[0, r], ref[0], rtol=1e-5, atol=1e-6)


def test_bad_shapes_are_clear_errors():
  with pytest.raises(ValueError, match=r"features must be \[H, W, C\]"):
    roi_pool_ops.roi_pool(jnp.zeros((5, 5)), jnp.zeros((1, 4)), 2)
  with pytest.raises(ValueError, match=r"boxes must be \[R, 4\]"):
    roi_pool_ops.roi_pool(arange_map(), jnp.zeros((1, 5)), 2)
