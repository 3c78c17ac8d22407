"""ops.pooling.max_pool2d: values and gradients equal XLA's reduce_window
max pool (flax's ``nn.max_pool``), ties included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax.ops.pooling import max_pool2d


def reference(x, window, stride, padding):
  return nn.max_pool(x, window, strides=(stride, stride), padding=padding)


@pytest.mark.parametrize("shape,window,stride,padding", [
    ((2, 9, 8, 3), (3, 3), 2, ((1, 1), (1, 1))),   # the ResNet stem's pool, odd/even sizes
    ((1, 6, 6, 2), (2, 2), 2, ((0, 0), (0, 0))),
    ((1, 7, 5, 1), (3, 2), 1, ((1, 0), (0, 1))),
])
@pytest.mark.parametrize("ties", [False, True])
def test_values_and_gradients_equal_reduce_window(shape, window, stride, padding, ties):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  if ties:  # few distinct values: most windows hold their maximum more than once
    x = np.round(x).astype(np.float32)
  g = rng.standard_normal(np.asarray(reference(x, window, stride, padding)).shape)
  ours = jax.jit(lambda v: max_pool2d(v, window, stride, padding))
  ref = jax.jit(lambda v: reference(v, window, stride, padding))
  np.testing.assert_array_equal(ours(x), ref(x))
  d_ours = jax.vjp(ours, x)[1](jnp.asarray(g, jnp.float32))[0]
  d_ref = jax.vjp(ref, x)[1](jnp.asarray(g, jnp.float32))[0]
  np.testing.assert_allclose(d_ours, d_ref, rtol=1e-6, atol=1e-6)


def test_hand_computed_3x3_stride_2():
  x = jnp.arange(25, dtype=jnp.float32).reshape(1, 5, 5, 1)
  y = max_pool2d(x, (3, 3), 2, ((1, 1), (1, 1)))
  np.testing.assert_array_equal(y[0, ..., 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
  # Each output's cotangent lands on its window's maximum; 24 is the maximum
  # of the bottom-right window only.
  dx = jax.grad(lambda v: max_pool2d(v, (3, 3), 2, ((1, 1), (1, 1))).sum())(x)[0, ..., 0]
  expected = np.zeros((5, 5))
  for v in (6, 8, 9, 16, 18, 19, 21, 23, 24):
    expected[v // 5, v % 5] += 1
  np.testing.assert_array_equal(dx, expected)


def test_bfloat16():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 8, 8, 4)), jnp.bfloat16)
  y = max_pool2d(x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.asarray(reference(x, (3, 3), 2, ((1, 1), (1, 1))), np.float32))
