"""The RoI heads' learnable layers (box MLP, box predictor, FCN mask head,
and the ablation variants: the C4 models' average-pooled box head, the
paper's MLP mask head); ``roi_heads`` wraps them with pooling, targets and
losses. Their field defaults are torchvision's and are read into
``config.model.roi_heads``.

Shape shorthand: B images, R RoIs per image, K classes including
background, M mask size (2x the RoI size).

torchvision flattens RoI features in (C, H, W) order before the first fc;
ours are (H, W, C). ``weights.py`` permutes fc6 accordingly when converting.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mrcnn_jax.model.layers import Conv, Upsample2x, make_norm

_normal001 = nn.initializers.normal(0.01)
_normal0001 = nn.initializers.normal(0.001)
_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _flatten_rois(x, dtype):
  """[..., h, w, C] (e.g. [B, R, ...] or packed [N, ...]) -> [prod(...), h, w, C]."""
  return x.reshape((-1,) + x.shape[-3:]).astype(dtype)


def _conv_stack(x, dims: Sequence[int], norm_kind, dtype, prefix: str, train: bool,
                axis_name: Optional[str]):
  """3x3 conv (+ norm) + ReLU per entry of ``dims``; layers are named
  ``{prefix}{i}`` (1-based) as torchvision / Detectron2 name them. Called
  from inside a compact ``__call__``, so the layers belong to that module.
  A ``"bn"`` norm uses batch statistics (and updates its running ones) when
  ``train``."""
  norm = make_norm(norm_kind, train=train, dtype=dtype, axis_name=axis_name)
  for i, dim in enumerate(dims):
    x = Conv(dim, 3, use_bias=norm_kind in (None, "none", ""), dtype=dtype,
             kernel_init=_kaiming_fan_out, name=f"{prefix}{i + 1}")(x)
    x = nn.relu(norm(name=f"{prefix}{i + 1}_norm")(x))
  return x


class BoxHead(nn.Module):
  """Optional convs then fcs on pooled RoI features [..., h, w, C] ->
  [..., fc_dim] (torchvision's TwoMLPHead when num_conv = 0); the leading
  axes are [B, R] or a packed [N]."""
  num_conv: int = 0
  conv_dim: int = 256
  num_fc: int = 2
  fc_dim: int = 1024
  norm: Optional[str] = None
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    lead = x.shape[:-3]
    x = _conv_stack(_flatten_rois(x, self.dtype), (self.conv_dim,) * self.num_conv,
                    self.norm, self.dtype, "conv", train, self.axis_name)
    x = x.reshape(x.shape[0], -1)
    for i in range(self.num_fc):
      x = nn.relu(nn.Dense(self.fc_dim, dtype=self.dtype, name=f"fc{i + 6}")(x))
    return x.reshape(lead + (-1,))


class AvgPoolBoxHead(nn.Module):
  """The C4 models' box head after the shared res5 (``roi_heads.trunk =
  "res5"``): the average over the RoI's h x w positions, [..., h, w, C] ->
  [..., C], as Detectron2's ``Res5ROIHeads``. No parameters."""
  dtype: Any = jnp.float32

  def __call__(self, x, train: bool = False):
    del train
    return x.astype(self.dtype).mean(axis=(-3, -2))


class BoxPredictor(nn.Module):
  """[B, R, F] -> class logits [B, R, K] and class-specific deltas [B, R, K, 4]."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_normal001,
                      name="cls_score")(x)
    deltas = nn.Dense(4 * self.num_classes, dtype=self.dtype, kernel_init=_normal0001,
                      name="bbox_pred")(x)
    return logits, deltas.reshape(deltas.shape[:-1] + (self.num_classes, 4))


class MaskHead(nn.Module):
  """FCN mask head: convs, a 2x deconv, and a 1x1 conv to K per-class logits.

  [..., m, m, C] -> mask logits [..., 2m, 2m, K], the leading axes [B, R] or
  a packed [N]. With ``class_agnostic`` the last conv has one channel, used
  for every class.
  """
  num_classes: int
  conv_dims: Sequence[int] = (256, 256, 256, 256)
  deconv_dim: int = 256
  norm: Optional[str] = None
  class_agnostic: bool = False
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    lead = x.shape[:-3]
    x = _conv_stack(_flatten_rois(x, self.dtype), self.conv_dims, self.norm, self.dtype,
                    "mask_fcn", train, self.axis_name)
    x = nn.relu(Upsample2x(self.deconv_dim, dtype=self.dtype, name="conv5_mask")(x))
    out = 1 if self.class_agnostic else self.num_classes
    # Detectron2 initialises the predictor with std 0.001 so the first mask
    # losses are ~log 2 instead of saturated sigmoids.
    x = Conv(out, 1, dtype=self.dtype, kernel_init=_normal0001, name="mask_fcn_logits")(x)
    return x.reshape(lead + x.shape[1:])


class MaskMLPHead(nn.Module):
  """The Mask R-CNN paper's MLP mask head (its Table 2e baseline): fcs on
  the flattened pooled RoI features, then one fc to an M x M mask per class,
  M = 2m as the FCN head's, so both predict the same resolution.

  [..., m, m, C] -> mask logits [..., 2m, 2m, K] (K = 1 class-agnostic).
  Unlike the FCN, every output pixel has its own weights on every input
  position: no translation equivariance, m^2 C * fc_dims[0] + fc_dims[-1]
  * 4m^2 K parameters.
  """
  num_classes: int
  fc_dims: Sequence[int] = (1024, 1024)
  class_agnostic: bool = False
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    lead, m = x.shape[:-3], x.shape[-3]
    x = _flatten_rois(x, self.dtype)
    x = x.reshape(x.shape[0], -1)
    for i, dim in enumerate(self.fc_dims):
      x = nn.relu(nn.Dense(dim, dtype=self.dtype, name=f"mask_fc{i + 1}")(x))
    out = 1 if self.class_agnostic else self.num_classes
    size = 2 * m
    x = nn.Dense(size * size * out, dtype=self.dtype, kernel_init=_normal0001,
                 name="mask_fc_logits")(x)
    return x.reshape(lead + (size, size, out))
