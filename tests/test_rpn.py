"""The RPN head at chosen anchors (``RPN.at_anchors``, what the training
losses read) against the dense head gathered at the same anchors: values and
gradients, zero to two 3x3 convolutions, anchors on every border."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax.model.rpn import RPN
from mrcnn_jax.ops import losses as loss_ops

GRIDS = ((12, 16), (6, 8), (3, 4), (2, 2), (1, 1))


@pytest.fixture(autouse=True)
def full_float32_products():
  """Both forms in full float32 (a GPU's default for float32 convolutions
  and products is TF32, whose rounding would swamp the comparison)."""
  with jax.default_matmul_precision("float32"):
    yield


def _setup(depth, dtype=jnp.float32, channels=8, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  feats = [jnp.asarray(rng.normal(size=(batch, h, w, channels)), jnp.float32) for h, w in GRIDS]
  rpn = RPN(conv_depth=depth, anchor_sizes=((8,), (16,), (32,), (64,), (128,)), dtype=dtype)
  params = rpn.init(jax.random.PRNGKey(seed), feats)["params"]
  # The default init (normal(0.01), zero biases) makes tiny outputs; larger
  # weights and nonzero biases test the arithmetic, ReLU's zeros included.
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.3, jnp.float32),
                        params)
  total = sum(h * w * 3 for h, w in GRIDS)
  # Every level's corners and edges, plus random anchors, and a repeat.
  corner = []
  start = 0
  for h, w in GRIDS:
    for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, 0), (0, w // 2)):
      for a in range(3):
        corner.append(start + (y * w + x) * 3 + a)
    start += h * w * 3
  index = np.stack([np.concatenate([corner, rng.integers(0, total, 40), [5, 5]])
                    for _ in range(batch)]).astype(np.int32)
  return rpn, params, feats, jnp.asarray(index)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_at_anchors_equals_the_dense_head_at_those_anchors(depth):
  rpn, params, feats, index = _setup(depth)
  logits, deltas = rpn.apply({"params": params}, feats)
  dense_l = jnp.take_along_axis(jnp.concatenate(logits, 1), index, axis=1)
  dense_d = jnp.take_along_axis(jnp.concatenate(deltas, 1), index[..., None], axis=1)
  sparse_l, sparse_d = rpn.apply({"params": params}, feats, index, method=RPN.at_anchors)
  np.testing.assert_allclose(sparse_l, dense_l, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sparse_d, dense_d, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(dense_l).max()) > 0.1  # not a comparison of zeros


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_rpn_loss_gradients_through_at_anchors_equal_the_dense_ones(depth):
  rpn, params, feats, index = _setup(depth, seed=1)
  rng = np.random.default_rng(2)
  # Distinct anchors per image (a sample has no repeats), borders first.
  k = min(len(np.unique(i)) for i in np.asarray(index))
  index = jnp.asarray(np.stack([i[np.sort(np.unique(i, return_index=True)[1])][:k]
                                for i in np.asarray(index)]))
  labels = jnp.asarray(rng.integers(-1, 2, index.shape), jnp.int32)
  targets = jnp.asarray(rng.normal(size=(*index.shape, 4)), jnp.float32)
  total = sum(h * w * 3 for h, w in GRIDS)
  # The dense form: the same targets scattered over every anchor.
  dense_labels = jnp.full((index.shape[0], total), -1, jnp.int32)
  dense_labels = jax.vmap(lambda d, i, l: d.at[i].set(l))(dense_labels, index, labels)
  dense_targets = jax.vmap(lambda i, t: jnp.zeros((total, 4)).at[i].set(t))(index, targets)

  def dense(p, f):
    lg, dl = rpn.apply({"params": p}, f)
    return sum(loss_ops.rpn_losses(jnp.concatenate(lg, 1), jnp.concatenate(dl, 1),
                                   dense_labels, dense_targets))

  def sparse(p, f):
    lg, dl = rpn.apply({"params": p}, f, index, method=RPN.at_anchors)
    return sum(loss_ops.rpn_losses(lg, dl, labels, targets))

  vd, gd = jax.value_and_grad(dense, argnums=(0, 1))(params, feats)
  vs, gs = jax.value_and_grad(sparse, argnums=(0, 1))(params, feats)
  np.testing.assert_allclose(vs, vd, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gs), jax.tree.leaves(gd)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(gd[1])) > 1e-3


def test_at_anchors_in_bfloat16_equals_the_dense_bfloat16_head():
  rpn32, params, feats, index = _setup(1)
  rpn16 = rpn32.clone(dtype=jnp.bfloat16)
  logits, deltas = rpn16.apply({"params": params}, feats)
  dense_l = jnp.take_along_axis(jnp.concatenate(logits, 1), index, axis=1)
  dense_d = jnp.take_along_axis(jnp.concatenate(deltas, 1), index[..., None], axis=1)
  l16, d16 = rpn16.apply({"params": params}, feats, index, method=RPN.at_anchors)
  assert l16.dtype == d16.dtype == jnp.bfloat16
  # The same bfloat16 roundings; the products' float32 sums may differ in
  # order, which can move a result by one bfloat16 step (2^-8 relative).
  for got, want in ((l16, dense_l), (d16, dense_d)):
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=1e-2, atol=1e-2)
  l32, _ = rpn32.apply({"params": params}, feats, index, method=RPN.at_anchors)
  np.testing.assert_allclose(np.float32(l16), l32, atol=0.03 * float(jnp.abs(l32).max()))
