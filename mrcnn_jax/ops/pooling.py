"""Max pooling (NHWC) with a gradient that is cheap on XLA:CPU.

Shape shorthand: N images, (H, W) input, (Ho, Wo) output, C channels,
(kh, kw) window, s stride.

``flax.linen.max_pool`` is ``lax.reduce_window``, whose gradient is XLA's
``select_and_scatter``. XLA:CPU runs that scatter with index arrays the size
of the padded input: for the ResNet stem of the shapes model (8 x 130 x 130 x
32 after padding) the pool and its gradient took about 140 ms of a 1.3 s train
step (four iotas, a broadcast, a scatter and a slow reduce-window). Here the
pool is the elementwise maximum of the kh * kw strided views of the padded
input, and its gradient routes each output's cotangent to the first input
(in row-major window order) that equals the maximum -- exactly what XLA's
``select_and_scatter`` with ``ge`` and PyTorch's ``max_pool2d`` backward do --
by placing each tap's masked cotangent back with a strided (interior) pad.
Both are loop fusions, without scatter or index arrays.

Values are identical to ``lax.reduce_window(max)`` (a max is exact), and so
are the gradients, ties included (tests/test_pooling.py).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _taps(xp, window, stride, out_hw):
  """Yields the strided view [N, Ho, Wo, C] of the padded input ``xp`` seen by
  each window tap (a, b), in row-major order."""
  n, _, _, c = xp.shape
  ho, wo = out_hw
  for a in range(window[0]):
    for b in range(window[1]):
      yield lax.slice(xp, (0, a, b, 0),
                      (n, a + stride * (ho - 1) + 1, b + stride * (wo - 1) + 1, c),
                      (1, stride, stride, 1))


def _out_hw(shape, window, stride, padding):
  return tuple((shape[1 + i] + padding[i][0] + padding[i][1] - window[i]) // stride + 1
               for i in range(2))


def _pad(x, padding):
  (pt, pb), (pl, pr) = padding
  return jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, padding):
  out_hw = _out_hw(x.shape, window, stride, padding)
  return functools.reduce(jnp.maximum, _taps(_pad(x, padding), window, stride, out_hw))


def _max_pool_fwd(x, window, stride, padding):
  y = _max_pool(x, window, stride, padding)
  return y, (x, y)


def _max_pool_bwd(window, stride, padding, residuals, g):
  x, y = residuals
  xp = _pad(x, padding)
  ho, wo = y.shape[1:3]
  hp, wp = xp.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  taken = jnp.zeros(y.shape, bool)
  dxp = jnp.zeros(xp.shape, g.dtype)
  for (a, b), tap in zip(((a, b) for a in range(window[0]) for b in range(window[1])),
                         _taps(xp, window, stride, (ho, wo))):
    first = (tap == y) & ~taken  # the first tap holding the maximum gets it
    taken = taken | first
    contrib = jnp.where(first, g, zero)
    # Back to padded-input positions (a + s*i, b + s*j): an interior pad.
    dxp = dxp + lax.pad(contrib, zero, (
        (0, 0, 0),
        (a, hp - a - (stride * (ho - 1) + 1), stride - 1),
        (b, wp - b - (stride * (wo - 1) + 1), stride - 1),
        (0, 0, 0)))
  (pt, pb), (pl, pr) = padding
  return (dxp[:, pt:hp - pb, pl:wp - pr, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool2d(x, window: Sequence[int] = (3, 3), stride: int = 2,
               padding: Sequence[tuple[int, int]] = ((1, 1), (1, 1))):
  """Max pooling of x [N, H, W, C] -> [N, Ho, Wo, C]; padding counts as -inf
  (PyTorch's ``max_pool2d``, flax's ``max_pool``)."""
  window = tuple(int(w) for w in window)
  padding = tuple((int(p[0]), int(p[1])) for p in padding)
  if len(window) != 2 or len(padding) != 2:
    raise ValueError(f"max_pool2d takes a 2-D window and padding, got {window}, {padding}")
  return _max_pool(x, window, int(stride), padding)
