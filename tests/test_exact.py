"""ops.exact: float32 quotients of integers from integer arithmetic, bit-equal
to IEEE division (numpy's float32 division is the reference)."""

import jax
import jax.numpy as jnp
import numpy as np

from mrcnn_jax.ops import exact

quotient = jax.jit(exact.f32_quotient)


def check(num, den):
  num, den = np.broadcast_arrays(np.asarray(num, np.int32), np.asarray(den, np.int32))
  got = np.asarray(quotient(jnp.asarray(num), jnp.asarray(den)))
  want = num.astype(np.float32) / den.astype(np.float32)
  bad = np.flatnonzero(got != want)
  assert bad.size == 0, (num.ravel()[bad[:5]], den.ravel()[bad[:5]], got.ravel()[bad[:5]],
                         want.ravel()[bad[:5]])


def test_small_denominators_every_numerator_to_4096():
  # RoIPool: a RoI's size in feature pixels over the output size.
  num = np.arange(1, 4097)[:, None]
  check(num, np.arange(1, 65)[None, :])
  check(num, np.asarray([96, 112, 127, 128, 255, 1000])[None, :])


def test_small_numerators_every_denominator_to_4096():
  # Keypoint decoding: the heatmap size over a box's size in pixels.
  den = np.arange(1, 4097)[None, :]
  check(np.asarray([1, 2, 3, 7, 14, 28, 56, 64, 112])[:, None], den)


def test_random_and_extreme_operands():
  rng = np.random.default_rng(0)
  lim = exact.QUOTIENT_LIMIT
  check(rng.integers(1, lim, 20000), rng.integers(1, lim, 20000))
  check(rng.integers(1, lim, 20000), rng.integers(1, 300, 20000))
  check(rng.integers(1, 300, 20000), rng.integers(1, lim, 20000))
  edge = np.asarray([1, 2, 3, 2 ** 23 - 1, 2 ** 23, 2 ** 23 + 1, lim - 2, lim - 1])
  check(edge[:, None], edge[None, :])


def test_floor_log2():
  n = np.concatenate([np.arange(1, 5000), [2 ** 23 - 1, 2 ** 23, 2 ** 30, 2 ** 31 - 1]])
  got = np.asarray(jax.jit(exact.floor_log2)(jnp.asarray(n, jnp.int32)))
  np.testing.assert_array_equal(got, [int(v).bit_length() - 1 for v in n])


def test_constant_divisors():
  # A divisor known while tracing (RoIPool's output size) takes other
  # compiler paths than a traced one; 1 among them.
  num = np.arange(1, 2049, dtype=np.int32)
  for den in (1, 2, 3, 7, 14, 64):
    got = np.asarray(jax.jit(lambda n, d=den: exact.f32_quotient(n, d))(jnp.asarray(num)))
    np.testing.assert_array_equal(got, num.astype(np.float32) / np.float32(den))


def test_divisor_of_one_in_any_form():
  # XLA:CPU could not compile the division for a constant divisor of 1.
  num = jnp.arange(1, 100, dtype=jnp.int32)
  for den in (1, np.int32(1), jnp.int32(1), 1.0):
    got = jax.jit(lambda n, d=den: exact.f32_quotient(n, d))(num)
    np.testing.assert_array_equal(got, np.arange(1, 100, dtype=np.float32))
