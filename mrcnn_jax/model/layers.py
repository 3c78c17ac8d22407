"""Small building blocks shared by the backbone and the heads.

Convolutions use explicit, symmetric padding (PyTorch's ``padding=k//2``),
not ``'SAME'``: with stride 2 and an even input, ``'SAME'`` pads only on the
bottom/right and the feature grid would be shifted half a pixel relative to
torchvision, breaking converted checkpoints.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrcnn_jax.ops import conv as conv_ops
from mrcnn_jax.ops.conv import conv2d

Dtype = Any


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics and affine parameters (torchvision's
  ``FrozenBatchNorm2d``): y = (x - mean) / sqrt(var + eps) * scale + bias.

  All four tensors live in ``params`` (so checkpoints carry them) but never
  receive gradients; the optimizer must also exclude them from weight decay
  (``train.trainable_mask`` does).
  """
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
    var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
    scale, bias, mean, var = jax.lax.stop_gradient((scale, bias, mean, var))
    mult = scale * jax.lax.rsqrt(var + self.eps)
    shift = bias - mean * mult
    return x * mult.astype(self.dtype) + shift.astype(self.dtype)


class GroupNorm(nn.Module):
  """GroupNorm with ``gcd(num_groups, C)`` groups, so narrow test-sized
  models work with the usual 32 (Detectron2's default).

  The variance is the two-pass mean((x - mean)^2), not Flax's default
  E[x^2] - E[x]^2: the one-pass form cancels catastrophically in float32
  where a group's mean is large against its spread, which amplifies the
  rounding of the reductions' summation order. Any other runtime sums in
  another order: the shapes model's ONNX export (onnxruntime) gave scores
  up to 2.0e-4 away from XLA's with the one-pass form and 6.4e-5 with this
  one (scripts/check_export.py, 2026-11-30). PyTorch's GroupNorm is
  two-pass (Welford) as well."""
  num_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    groups = math.gcd(self.num_groups, x.shape[-1])
    return nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=self.dtype, name="gn",
                        use_fast_variance=False)(x)


def make_norm(kind: Optional[str], *, train: bool = False, dtype: Dtype = jnp.float32,
              num_groups: int = 32, axis_name: Optional[str] = None) -> Callable[..., nn.Module]:
  """Returns a constructor ``norm(name=...)`` for the chosen normalisation.

  kind: ``'frozen_bn'`` (pretrained backbones), ``'bn'`` (trainable
  BatchNorm; batch statistics in the ``batch_stats`` collection, synchronised
  over ``axis_name`` when given), ``'gn'`` (GroupNorm, no batch statistics,
  good for training from scratch at small batch) or ``None`` (identity).
  """
  if kind == "frozen_bn":
    return functools.partial(FrozenBatchNorm, dtype=dtype)
  if kind == "bn":
    return functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=dtype,
                             axis_name=axis_name if train else None)
  if kind == "gn":
    return functools.partial(GroupNorm, num_groups=num_groups, dtype=dtype)
  if kind in (None, "none", ""):
    return lambda name=None: (lambda x: x)
  raise ValueError(f"unknown norm {kind!r}; expected 'frozen_bn', 'bn', 'gn' or None")


class Conv(nn.Module):
  """2-D convolution with PyTorch-style symmetric padding ``kernel // 2``.

  The parameters are those of ``flax.linen.Conv`` (``kernel`` [k, k, C /
  groups, D] and ``bias`` [D], float32), so checkpoints do not depend on this
  class; the arithmetic is ``ops.conv.conv2d``, whose gradients are fast on
  XLA:CPU too.
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  groups: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    if c % self.groups:
      raise ValueError(f"{self.name}: {c} input channels are not divisible into "
                       f"{self.groups} groups")
    kernel = self.param("kernel", self.kernel_init, (k, k, c // self.groups, self.features),
                        jnp.float32)
    pad = k // 2
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), stride=self.stride,
               padding=((pad, pad), (pad, pad)), groups=self.groups)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y


def conv(features: int, kernel: int, stride: int = 1, *, groups: int = 1,
         use_bias: bool = False, dtype: Dtype = jnp.float32, name: str | None = None,
         kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal")):
  """The backbone's convolution: no bias, Kaiming fan-out init."""
  return Conv(features, kernel, stride, groups=groups, use_bias=use_bias, dtype=dtype,
              kernel_init=kernel_init, name=name)


class Upsample2x(nn.Module):
  """2x2, stride-2 transposed convolution (the mask head's deconv).

  With kernel = stride = 2 the output pixels do not overlap, so the layer is
  a per-pixel matmul followed by a depth-to-space. Writing it this way avoids
  any ambiguity about kernel flipping between frameworks: kernel[a, b, i, o]
  is PyTorch's ``ConvTranspose2d.weight[i, o, a, b]``.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                        (2, 2, c, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = jnp.einsum("nhwi,abio->nhawbo", x.astype(self.dtype), kernel.astype(self.dtype))
    n, h, _, w, _, o = y.shape
    return y.reshape(n, 2 * h, 2 * w, o) + bias.astype(self.dtype)


def nearest_resize(x, size: tuple[int, int]):
  """Nearest-neighbour resize of [B, H, W, C] to ``size``, PyTorch's
  ``F.interpolate(mode='nearest')``: source index floor(dst * in / out)."""
  h_in, w_in = x.shape[1:3]
  h_out, w_out = size
  if (h_out, w_out) == (2 * h_in, 2 * w_in):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  # Indices are static: computed in numpy float32, as PyTorch does.
  iy = np.floor(np.arange(h_out, dtype=np.float32) * np.float32(h_in / h_out))
  ix = np.floor(np.arange(w_out, dtype=np.float32) * np.float32(w_in / w_out))
  iy = np.minimum(iy.astype(np.int32), h_in - 1)
  ix = np.minimum(ix.astype(np.int32), w_in - 1)
  return x[:, iy][:, :, ix]


def divisor_at_most(n: int, k: int) -> int:
  """The largest divisor of n that is at most k (k >= 1)."""
  return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


# The backends on which a head's ``chunk`` (``apply_to_prefix``) applies;
# elsewhere the head runs on every slot at once. R50-FPN 1x train step,
# batch 2 at 512x512 on a 2-core CPU: about half the time chunked (9.23 ->
# 5.35 s). On an H200, batch 16 at 800x1344 in bfloat16: 0.0881 s chunked
# against 0.0795 s on every slot (13.6 against 12.4 GiB), since one batched
# head is cheap there and each loop iteration costs kernel launches
# (README, Speed).
CHUNK_BACKENDS = ("cpu",)


def apply_head(head: nn.Module, x, count, chunk: int, **kwargs):
  """``head(x, **kwargs)``; with ``count`` (the filled rows come first) and
  a nonzero ``chunk`` on a backend of ``CHUNK_BACKENDS``, on the filled rows
  only (``apply_to_prefix``). The mask and keypoint heads' one dispatch,
  decided while tracing."""
  if count is not None and chunk and jax.default_backend() in CHUNK_BACKENDS:
    return apply_to_prefix(head, x, count, chunk, **kwargs)
  return head(x, **kwargs)


def apply_to_prefix(module: nn.Module, x, count, max_chunk: int, **kwargs):
  """``module(x, **kwargs)`` on the first ``count`` rows of ``x`` only, in
  chunks of the largest divisor of ``x.shape[0]`` up to ``max_chunk`` rows;
  the other rows of the result are zeros, and get no gradient. For a head
  whose batch is a set of slots of which only a prefix is filled (the mask
  head on the packed positive RoIs): its cost follows the rows there are,
  not the rows there could be, while every shape stays static. ``count`` may
  be traced; rows must be independent of each other (no batch statistics).

  A ``lax.while_loop`` runs ceil(count / chunk) chunks. Under
  differentiation (a ``custom_vjp``) the forward loop keeps each chunk's
  pullback residuals in buffers with one row per chunk (activations, and
  the parameters again: the head's parameters once per chunk), and the
  backward loop runs the chunks' pullbacks and sums the parameter
  gradients. Convolutions in both loops are traced under
  ``ops.conv.loop_body()``: XLA:CPU's own convolution gradients are many
  times slower inside a loop body.
  """
  n = x.shape[0]
  chunk = divisor_at_most(n, max_chunk)
  if module.is_initializing():
    return module(x, **kwargs)  # creates the parameters; values unused
  variables = module.variables
  unbound = module.clone(parent=None)

  def fn(v, xc):
    with conv_ops.loop_body():
      return unbound.apply(v, xc, **kwargs)

  out_shape = jax.eval_shape(fn, variables, x[:chunk])
  count = jnp.asarray(count, jnp.int32)

  def num_chunks(c):
    return jnp.minimum((c + chunk - 1) // chunk, n // chunk)

  @jax.custom_vjp
  def run(v, xs, c):
    def body(carry):
      i, out = carry
      y = fn(v, jax.lax.dynamic_slice_in_dim(xs, i * chunk, chunk))
      return i + 1, jax.lax.dynamic_update_slice_in_dim(out, y, i * chunk, 0)
    out = jnp.zeros((n,) + out_shape.shape[1:], out_shape.dtype)
    return jax.lax.while_loop(lambda carry: carry[0] < num_chunks(c), body, (0, out))[1]

  def chunk_vjp(v, xc):
    y, pullback = jax.vjp(fn, v, xc)
    leaves, treedef = jax.tree.flatten(pullback)
    return y, leaves, treedef

  saved = {}

  def run_fwd(v, xs, c):
    # Each chunk's pullback residuals go into buffers with one row per
    # chunk, so the backward loop need not run the forward pass again.
    shapes = jax.eval_shape(lambda v, xc: chunk_vjp(v, xc)[:2], v, xs[:chunk])[1]
    bufs = [jnp.zeros((n // chunk,) + r.shape, r.dtype) for r in shapes]

    def body(carry):
      i, out, bufs = carry
      y, leaves, treedef = chunk_vjp(v, jax.lax.dynamic_slice_in_dim(xs, i * chunk, chunk))
      saved["treedef"] = treedef
      bufs = [jax.lax.dynamic_update_index_in_dim(b, r, i, 0) for b, r in zip(bufs, leaves)]
      return i + 1, jax.lax.dynamic_update_slice_in_dim(out, y, i * chunk, 0), bufs
    out = jnp.zeros((n,) + out_shape.shape[1:], out_shape.dtype)
    _, out, bufs = jax.lax.while_loop(lambda carry: carry[0] < num_chunks(c), body,
                                      (0, out, bufs))
    return out, (v, xs, c, bufs)

  def run_bwd(res, g):
    v, xs, c, bufs = res
    treedef = saved["treedef"]

    def body(carry):
      i, dv, dx = carry
      gc = jax.lax.dynamic_slice_in_dim(g, i * chunk, chunk)
      pullback = jax.tree.unflatten(treedef, [jax.lax.dynamic_index_in_dim(b, i, 0, False)
                                              for b in bufs])
      dvc, dxc = pullback(gc)
      return (i + 1, jax.tree.map(jnp.add, dv, dvc),
              jax.lax.dynamic_update_slice_in_dim(dx, dxc, i * chunk, 0))
    init = (0, jax.tree.map(jnp.zeros_like, v), jnp.zeros_like(xs))
    _, dv, dx = jax.lax.while_loop(lambda carry: carry[0] < num_chunks(c), body, init)
    return dv, dx, None

  run.defvjp(run_fwd, run_bwd)
  return run(variables, x, count)
