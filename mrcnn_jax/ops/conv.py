"""2-D convolution (NHWC images, HWIO kernels) with gradients that are fast on
XLA:CPU as well as on accelerators. Same values as ``lax.conv_general_dilated``.

Shape shorthand: N images (or RoIs), (H, W) input, (Ho, Wo) output, C input
channels, D output channels, (kh, kw) kernel, s stride, P = N * Ho * Wo.

Why this exists (measured on a 2-core x86 CPU, float32; see
``scripts/benchmark_train.py --profile`` for the effect on a train step):

* XLA:CPU computes a convolution's *kernel* gradient with a generic
  convolution routine that runs 2-3x slower than the forward pass once the
  spatial extent or the batch is large: for 256 RoIs of 14 x 14 x 256 (the
  mask head) 840-1300 ms against a 410 ms forward; for FPN's P2 (2 x 128 x
  128 x 256) 550-920 ms against 210 ms. The same numbers come from kh * kw
  matrix products, one per kernel tap: dK[a, b] = X_ab^T dY, where X_ab is
  the padded input shifted by (a, b) and strided, flattened to [P, C], and dY
  is [P, D]. That takes 540 ms and 370 ms for the two shapes above. For small
  P or few channels (ResNet stages at 2 x 32 x 32, the narrow shapes model)
  XLA's own routine is faster, so the matrix form is used only from
  ``SHIFTED_MIN_PIXELS`` output pixels and ``SHIFTED_MIN_CHANNELS`` input
  channels on, and on the CPU backend only (accelerators keep XLA's kernels).
* A 1 x 1 convolution *is* a matrix product over channels (after striding).
  Written as one, its forward, input gradient and kernel gradient are all
  matrix products; XLA:CPU's convolution kernel gradient for it is up to 8x
  slower. This form is used on every backend: it is the same arithmetic.

* A convolution over 3 input channels (an RGB stem) is up to 10x slower on
  XLA:CPU for some output widths than the same convolution over 4 channels,
  one of them zero: the 7 x 7 stride-2 stem of 4 x 256 x 256 x 3 images into
  24 / 32 / 48 channels took 81 / 31 / 13 ms against 10 / 9 / 10 ms with the
  padded channel (1 x 800 x 1088: 249 / 99 / 41 ms against 21 / 22 / 30 ms;
  ``scripts/bench_conv.py``). For 8, 16, 64 and 128 output channels XLA's
  routine is fast already (8.5 / 7.2 / 8.6 / 20.8 ms), so the input is
  padded only for ``PAD_RGB_OUTPUT_CHANNELS`` on the CPU backend. The zero
  channel adds exact zeros to the same terms; only the summation order may
  change.

* Every other kernel gradient on the CPU backend is XLA's own routine run
  on output tiles and summed. That routine's time grows much faster than
  the work: at 64 output channels, 4 x 32 x 32 pixels took 5.1 ms, 8 x 32 x
  32 16.7 ms and 4 x 64 x 64 47 ms, so the same gradient as a sum over
  16 tiles of 32 x 32 output pixels took 11-23 ms against 32-61 ms; for 2 x
  64 x 64 x 128 (a ResNet-50 stage at 512 x 512) 18 ms against 73 ms; for the
  32 mask-head RoIs of 14 x 14 x 64 of the shapes model, grouped five RoIs a
  tile, 5-7 ms against 11-12 ms (2-core Xeon, jax 0.10.2, 2026-11-30). A
  tile is at most ``TILE`` x ``TILE`` output pixels of one image, or several
  whole images up to ``TILE_PIXELS`` pixels; a convolution with one tile is
  XLA's unchanged. Each tile reads its own input window (halo included),
  so the sum is the whole gradient, in another summation order.

* Inside a loop body (``lax.while_loop``; see ``loop_body``) XLA:CPU's
  convolution *gradients* are far slower still, while its forward
  convolution and matrix products are not: for 16 RoIs of 14 x 14 x 256
  (3x3, 256 -> 256) the kernel gradient took 1.7-3.8 s in a loop body
  against 25 ms as nine matrix products, and the input gradient 110 ms
  against about 45 ms as the forward convolution it is (2-core EPYC, jax
  0.10.2, 2026-11-30). Within ``loop_body()`` a stride-1 convolution on the
  CPU backend therefore takes both gradients in those forms.

Results equal ``lax.conv_general_dilated`` and its autodiff gradients up to
float32 summation order (tests/test_conv.py checks values and gradients for
both forms).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

# A k x k kernel gradient is computed as k*k matrix products on the CPU
# backend from this many output pixels (N * Ho * Wo) and input channels on.
# Elsewhere XLA's own routine was as fast or faster: 2 x 64 x 64 x 256: 59 ms
# vs 96 ms; 2 x 128 x 128 x 64: 36 ms vs 70 ms; but 128 x 14 x 14 x 256:
# 269 ms vs 375 ms.
SHIFTED_MIN_PIXELS = 16384
SHIFTED_MIN_CHANNELS = 256

# On the CPU backend a convolution of 3-channel input into this many output
# channels runs on the input padded with one zero channel (module docstring;
# 2-core Xeon, jax 0.10.2, 2026-11-30).
PAD_RGB_OUTPUT_CHANNELS = range(24, 64)

# On the CPU backend the other kernel gradients are summed over output tiles
# of at most TILE x TILE pixels of one image, or of whole images up to
# TILE_PIXELS pixels (module docstring).
TILE = 32
TILE_PIXELS = 1024


def _xla_conv(x, kernel, stride: int, padding, groups: int):
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=_DIMENSION_NUMBERS,
                                  feature_group_count=groups)


def _conv1x1(x, kernel, stride: int):
  """1 x 1 convolution, no padding: stride, then a matmul over channels."""
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  return _channel_matmul(x, kernel)


@jax.custom_vjp
def _channel_matmul(x, kernel):
  return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0])


def _channel_matmul_fwd(x, kernel):
  return _channel_matmul(x, kernel), (x, kernel)


def _channel_matmul_bwd(residuals, dy):
  x, kernel = residuals
  # dy is stored once before both products use it. Without the barrier
  # XLA:CPU fuses dy's producers (ReLU mask, frozen-BN scale, the residual
  # sum) into the transposing copy the kernel gradient's product needs, once
  # per consumer, and runs that fused transpose slowly.
  dy = jax.lax.optimization_barrier(dy)
  c, d = kernel.shape[2:]
  dy2 = dy.reshape(-1, d)
  dx = jnp.matmul(dy2, kernel[0, 0].T.astype(dy.dtype)).reshape(x.shape).astype(x.dtype)
  dk = jnp.matmul(x.reshape(-1, c).T, dy2.astype(x.dtype))
  return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_channel_matmul.defvjp(_channel_matmul_fwd, _channel_matmul_bwd)


def _shifted_taps(x, kernel_hw, stride: int, padding, out_hw):
  """Yields ((a, b), X_ab [P, C]): the padded input seen by kernel tap (a, b)."""
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho, wo = out_hw
  c = x.shape[-1]
  for a in range(kernel_hw[0]):
    for b in range(kernel_hw[1]):
      tap = lax.slice(xp, (0, a, b, 0),
                      (xp.shape[0], a + stride * (ho - 1) + 1, b + stride * (wo - 1) + 1, c),
                      (1, stride, stride, 1))
      yield (a, b), tap.reshape(-1, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_shifted_grad(x, kernel, stride: int, padding):
  return _xla_conv(x, kernel, stride, padding, 1)


def _conv_fwd_keep_inputs(x, kernel, stride, padding):
  """The forward of the custom-gradient forms: XLA's, keeping x and kernel."""
  return _xla_conv(x, kernel, stride, padding, 1), (x, kernel)


def _xla_input_grad(x, kernel, stride, padding, dy):
  """XLA's own input gradient (a transposed convolution, as fast as the
  forward). jax.vjp also traces a forward pass, which XLA removes as dead."""
  return jax.vjp(lambda v: _xla_conv(v, kernel, stride, padding, 1), x)[1](dy)[0]


def _shifted_kernel_grad(x, kernel, stride, padding, dy):
  """The kernel gradient as kh * kw matrix products, X_ab^T dY per tap."""
  kh, kw, c, d = kernel.shape
  dy_flat = dy.reshape(-1, d)
  taps = [jnp.matmul(tap.T, dy_flat) for _, tap in
          _shifted_taps(x, (kh, kw), stride, padding, dy.shape[1:3])]
  return jnp.stack(taps).reshape(kh, kw, c, d).astype(kernel.dtype)


def _conv_shifted_grad_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  return (_xla_input_grad(x, kernel, stride, padding, dy),
          _shifted_kernel_grad(x, kernel, stride, padding, dy))


_conv_shifted_grad.defvjp(_conv_fwd_keep_inputs, _conv_shifted_grad_bwd)


def output_tiles(n: int, ho: int, wo: int, tile: int | None = None,
                 tile_pixels: int | None = None) -> list[tuple[slice, slice, slice]]:
  """The (images, rows, cols) output slices the tiled kernel gradient sums
  over: whole images, as many as fit in ``tile_pixels``, when one image has
  at most that many output pixels; otherwise ``tile`` x ``tile`` pieces of
  one image (smaller at the right and bottom edges). Defaults: ``TILE``,
  ``TILE_PIXELS``."""
  tile = TILE if tile is None else tile
  tile_pixels = TILE_PIXELS if tile_pixels is None else tile_pixels
  if ho * wo <= tile_pixels:
    g = max(1, tile_pixels // (ho * wo))
    return [(slice(i, min(i + g, n)), slice(0, ho), slice(0, wo)) for i in range(0, n, g)]
  return [(slice(i, i + 1), slice(r, min(r + tile, ho)), slice(c, min(c + tile, wo)))
          for i in range(n) for r in range(0, ho, tile) for c in range(0, wo, tile)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_tiled_grad(x, kernel, stride: int, padding):
  return _xla_conv(x, kernel, stride, padding, 1)


def _conv_tiled_grad_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  dx = _xla_input_grad(x, kernel, stride, padding, dy)
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  kh, kw = kernel.shape[:2]
  dk = jnp.zeros(kernel.shape, jnp.float32)
  for imgs, rows, cols in output_tiles(*dy.shape[:3]):
    # The input window of these output pixels, halo included: output row r
    # reads padded rows r * stride .. r * stride + kh - 1.
    xt = xp[imgs, rows.start * stride:(rows.stop - 1) * stride + kh,
            cols.start * stride:(cols.stop - 1) * stride + kw]
    part = jax.vjp(lambda k: _xla_conv(xt, k, stride, ((0, 0), (0, 0)), 1),
                   kernel)[1](dy[imgs, rows, cols])[0]
    dk = dk + part.astype(jnp.float32)  # tiles summed in float32 (bf16 too)
  return dx, dk.astype(kernel.dtype)


_conv_tiled_grad.defvjp(_conv_fwd_keep_inputs, _conv_tiled_grad_bwd)


_LOOP_BODY = threading.local()


def _in_loop_body() -> bool:
  return getattr(_LOOP_BODY, "depth", 0) > 0


@contextlib.contextmanager
def loop_body():
  """While tracing a loop body (``lax.while_loop``) on the CPU backend, use
  the loop-safe gradient form for stride-1 convolutions (module docstring).
  A trace-time switch, per thread: it changes which program is built, not
  values."""
  _LOOP_BODY.depth = getattr(_LOOP_BODY, "depth", 0) + 1
  try:
    yield
  finally:
    _LOOP_BODY.depth -= 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_loop_safe(x, kernel, stride: int, padding):
  return _xla_conv(x, kernel, stride, padding, 1)


def _conv_loop_safe_bwd(stride, padding, residuals, dy):
  assert stride == 1, stride  # conv2d takes this form for stride 1 only
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  (pt, pb), (pl, pr) = padding
  # Stride 1: the input gradient is the forward convolution of dy with the
  # kernel turned by 180 degrees and its channel axes swapped, padded so the
  # result has x's size (kh - 1 - pad on each side).
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
  dx = _xla_conv(dy.astype(x.dtype), flipped.astype(x.dtype), 1,
                 ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr)), 1)
  return dx.astype(x.dtype), _shifted_kernel_grad(x, kernel, 1, padding, dy)


_conv_loop_safe.defvjp(_conv_fwd_keep_inputs, _conv_loop_safe_bwd)


def _out_size(size: int, k: int, stride: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - k) // stride + 1


def conv2d(x, kernel, *, stride: int = 1, padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
           groups: int = 1, kernel_grad: str = "auto"):
  """Convolution of x [N, H, W, C] with kernel [kh, kw, C / groups, D].

  Args:
    stride: the same along both axes.
    padding: explicit ((top, bottom), (left, right)) zero padding.
    groups: feature groups (ResNeXt); grouped convolutions always use XLA's
      routine.
    kernel_grad: ``"auto"`` (matrix products where measured faster, see the
      module docstring), ``"xla"`` (always XLA's convolution gradients),
      ``"shifted"`` (always kh * kw matrix products) or ``"tiled"`` (always
      XLA's kernel gradient summed over output tiles); the last two for
      tests and measurements.

  Returns:
    [N, Ho, Wo, D] in the promoted dtype of x and kernel.
  """
  if kernel_grad not in ("auto", "xla", "shifted", "tiled"):
    raise ValueError(f"kernel_grad must be 'auto', 'xla', 'shifted' or 'tiled', got "
                     f"{kernel_grad!r}")
  padding = tuple((int(p[0]), int(p[1])) for p in padding)
  kh, kw = kernel.shape[:2]
  if groups != 1 or kernel_grad == "xla":
    return _xla_conv(x, kernel, stride, padding, groups)
  if (kh, kw) == (1, 1) and padding == ((0, 0), (0, 0)):
    return _conv1x1(x, kernel, stride)
  if kernel_grad == "auto":
    if (x.shape[-1] == 3 and kernel.shape[-1] in PAD_RGB_OUTPUT_CHANNELS
        and jax.default_backend() == "cpu"):
      # One zero input channel: a much faster routine (module docstring).
      return _xla_conv(jnp.pad(x, ((0, 0),) * 3 + ((0, 1),)),
                       jnp.pad(kernel, ((0, 0),) * 2 + ((0, 1), (0, 0))), stride, padding, 1)
    ho = _out_size(x.shape[1], kh, stride, padding[0])
    wo = _out_size(x.shape[2], kw, stride, padding[1])
    if jax.default_backend() != "cpu":
      return _xla_conv(x, kernel, stride, padding, 1)
    if _in_loop_body() and stride == 1 and max(padding[0]) < kh and max(padding[1]) < kw:
      return _conv_loop_safe(x, kernel, 1, padding)
    if x.shape[0] * ho * wo < SHIFTED_MIN_PIXELS or x.shape[-1] < SHIFTED_MIN_CHANNELS:
      if len(output_tiles(x.shape[0], ho, wo)) == 1:
        return _xla_conv(x, kernel, stride, padding, 1)
      return _conv_tiled_grad(x, kernel, stride, padding)
  elif kernel_grad == "tiled":
    return _conv_tiled_grad(x, kernel, stride, padding)
  return _conv_shifted_grad(x, kernel, stride, padding)
