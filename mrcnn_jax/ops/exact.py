"""Integer arithmetic that reproduces float32 results bit for bit on every
backend.

Some reference semantics (torchvision's RoIPool bins, PyTorch's bicubic
resize in keypoint decoding) floor or ceil multiples of an integer
quotient such as ``size / output_size`` computed in float32, so the
quotient's last bit decides an integer result (9 / 7 * 7 is 9.000001,
whose ceil is 10). A float division cannot be trusted for that bit: XLA:CPU
rewrites a division by a constant as a product with the rounded reciprocal,
and XLA:GPU lowers float32 division to PTX ``div.full``, within 2 ulp but
not correctly rounded (on an H200, RoIPool then differed from torchvision in
about 1% of its outputs). ``f32_quotient`` builds the correctly rounded quotient
from integer operations, which every backend computes exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Operands of f32_quotient are below this: the quotient's bits then fit int32.
QUOTIENT_LIMIT = 2 ** 24


def floor_log2(n):
  """floor(log2 n) of int32 n >= 1 (exact, unlike a float log)."""
  return 31 - jax.lax.clz(jnp.asarray(n, jnp.int32))


def f32_quotient(num, den):
  """``num / den`` rounded to the nearest float32, ties to even: what IEEE
  float32 division of the two (exactly representable) integers gives.

  Args:
    num, den: int32 arrays (or ints) in [1, ``QUOTIENT_LIMIT``), broadcast
      together; callers clip their operands into that range.

  Returns:
    float32, the shape of the broadcast operands.
  """
  num, den = jnp.broadcast_arrays(jnp.asarray(num, jnp.int32), jnp.asarray(den, jnp.int32))
  # The divisor as an opaque value: XLA:CPU (jax 0.10.2) fails to compile
  # the long division below with a constant divisor of 1 ("Unknown MLIR
  # failure"), and folding a constant divisor saves nothing here.
  den = jax.lax.optimization_barrier(den)
  q, r = num // den, num % den  # q < 2^24
  shift = jnp.zeros_like(q)
  # Long division, one quotient bit a step, until q holds 24 significant
  # bits (q >= 2^23): value = (q + r / den) * 2^-shift throughout. At most
  # 47 steps (num = 1, den = 2^24 - 1); 2 * r < 2^25 never overflows.
  for _ in range(47):
    more = q < 2 ** 23
    r2 = 2 * r
    bit = (r2 >= den).astype(jnp.int32)
    q = jnp.where(more, 2 * q + bit, q)
    r = jnp.where(more, r2 - bit * den, r)
    shift = shift + more.astype(jnp.int32)
  # Round the remainder r / den (< 1 unit in the last place) to nearest; a
  # tie cannot occur for operands below 2^24 (it would need a 25-bit odd
  # quotient), the even rule is there for the record.
  q = q + ((2 * r > den) | ((2 * r == den) & (q % 2 == 1))).astype(jnp.int32)
  # q (<= 2^24) is exact in float32, and 2^-shift is built from its bits.
  scale = jax.lax.bitcast_convert_type(jnp.left_shift(127 - shift, 23), jnp.float32)
  return q.astype(jnp.float32) * scale
