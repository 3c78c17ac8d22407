"""ResNet / ResNeXt backbones (NHWC), torchvision's v1.5 layout.

Shape shorthand: B images, (H, W) input size; C2..C5 have strides 4..32.

Depths 18/34 use basic blocks, 50/101/152 bottlenecks with the stride on the
3x3 conv (v1.5, as torchvision). ResNeXt is a bottleneck ResNet with
``groups`` and ``width_per_group`` (ResNeXt-101 32x8d: groups=32,
width_per_group=8). Parameter names mirror torchvision (``conv1``, ``bn1``,
``layer1_0/conv1`` ...) so checkpoint conversion is a mechanical rename.

``freeze_at`` follows Detectron2: 0 trains everything, 1 freezes the stem,
k >= 2 freezes the stem and stages layer1..layer{k-1}. Frozen parts are cut
from the gradient with ``stop_gradient``; ``is_frozen`` tells the optimizer
to keep off them too.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrcnn_jax.model.layers import conv, make_norm
from mrcnn_jax.ops.pooling import max_pool2d

STAGE_BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class BasicBlock(nn.Module):
  planes: int
  stride: int
  downsample: bool
  norm: Any
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x):
    identity = x
    y = conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = conv(self.planes, 3, 1, dtype=self.dtype, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    if self.downsample:
      identity = conv(self.planes, 1, self.stride, dtype=self.dtype,
                      name="downsample_conv")(x)
      identity = self.norm(name="downsample_bn")(identity)
    return nn.relu(y + identity)


class Bottleneck(nn.Module):
  planes: int
  stride: int
  downsample: bool
  norm: Any
  groups: int = 1
  width_per_group: int = 64
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x):
    width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
    identity = x
    y = conv(width, 1, 1, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = conv(width, 3, self.stride, groups=self.groups, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = conv(self.planes * 4, 1, 1, dtype=self.dtype, name="conv3")(y)
    y = self.norm(name="bn3")(y)
    if self.downsample:
      identity = conv(self.planes * 4, 1, self.stride, dtype=self.dtype,
                      name="downsample_conv")(x)
      identity = self.norm(name="downsample_bn")(identity)
    return nn.relu(y + identity)


def resnet_stage(x, stage: int, *, depth: int, norm, groups: int, width_per_group: int,
                 width: int, dtype):
  """Stage ``stage`` (0-based: 0 = torchvision's layer1 / C2, 3 = layer4 /
  C5) of a ResNet on ``x`` [N, H, W, C]; its blocks are named
  ``layer{stage + 1}_{i}`` in the calling (compact) module. The first block
  of stages 1..3 halves the resolution."""
  planes = width * 2 ** stage
  for i in range(STAGE_BLOCKS[depth][stage]):
    stride = 2 if (i == 0 and stage > 0) else 1
    in_ch = x.shape[-1]
    if depth < 50:
      block = BasicBlock(planes, stride, downsample=(stride != 1 or in_ch != planes),
                         norm=norm, dtype=dtype, name=f"layer{stage + 1}_{i}")
    else:
      block = Bottleneck(planes, stride, downsample=(stride != 1 or in_ch != planes * 4),
                         norm=norm, groups=groups, width_per_group=width_per_group,
                         dtype=dtype, name=f"layer{stage + 1}_{i}")
    x = block(x)
  return x


class ResNet(nn.Module):
  """Returns the list [C2, .., C{num_stages + 1}] of [B, H/s, W/s, C_s]
  features: [C2, C3, C4, C5] by default; ``num_stages=3`` stops at C4 (the
  C4 models, whose res5 runs per RoI: ``ResNetStage``)."""
  depth: int = 50
  groups: int = 1
  width_per_group: int = 64
  norm: Optional[str] = "frozen_bn"
  freeze_at: int = 2
  width: int = 64  # channels of the stem and of layer1's 3x3 convs; 64 is standard
  num_stages: int = 4
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.depth not in STAGE_BLOCKS:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth}")
    if self.num_stages not in (1, 2, 3, 4):
      raise ValueError(f"config.model.backbone.num_stages must be 1..4, got {self.num_stages}")
    norm = make_norm(self.norm, train=train, dtype=self.dtype, axis_name=self.axis_name)
    x = x.astype(self.dtype)
    x = conv(self.width, 7, 2, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    x = max_pool2d(x, (3, 3), 2, ((1, 1), (1, 1)))  # flax's max_pool, cheaper gradient
    if self.freeze_at >= 1:
      x = jax.lax.stop_gradient(x)
    outputs = []
    for stage in range(self.num_stages):
      x = resnet_stage(x, stage, depth=self.depth, norm=norm, groups=self.groups,
                       width_per_group=self.width_per_group, width=self.width,
                       dtype=self.dtype)
      if self.freeze_at >= stage + 2:
        x = jax.lax.stop_gradient(x)
      outputs.append(x)
    return outputs

  def is_frozen(self, module_name: str) -> bool:
    """Whether ``freeze_at`` freezes the top-level submodule ``module_name``
    (``conv1``, ``bn1``, ``layer2_0``, ...); the optimizer leaves those
    parameters alone (``train.make_optimizer``)."""
    if module_name in ("conv1", "bn1"):
      return self.freeze_at >= 1
    stage = module_name[5:].split("_")[0] if module_name.startswith("layer") else ""
    return stage.isdigit() and int(stage) < self.freeze_at

  @staticmethod
  def out_channels(depth: int) -> Sequence[int]:
    mult = 1 if depth < 50 else 4
    return tuple(64 * 2 ** s * mult for s in range(4))


class ResNetStage(nn.Module):
  """One ResNet stage run on pooled RoI features: the res5 head of the C4
  models (Mask R-CNN's ResNet-C4, Detectron2's ``Res5ROIHeads``), shared by
  the box and the mask branch. [..., h, w, C4] -> [..., h/2, w/2, C5]; the
  leading axes are [B, R] or a packed [N]. Parameters ``layer4_{i}``, named
  as the backbone's would be (ImageNet weights convert into them), always
  trained (``freeze_at`` concerns the backbone)."""
  depth: int = 50
  groups: int = 1
  width_per_group: int = 64
  norm: Optional[str] = "frozen_bn"
  width: int = 64
  stage: int = 3  # 0-based; 3 = res5 (torchvision's layer4)
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    lead = x.shape[:-3]
    norm = make_norm(self.norm, train=train, dtype=self.dtype, axis_name=self.axis_name)
    x = x.reshape((-1,) + x.shape[-3:]).astype(self.dtype)
    x = resnet_stage(x, self.stage, depth=self.depth, norm=norm, groups=self.groups,
                     width_per_group=self.width_per_group, width=self.width, dtype=self.dtype)
    return x.reshape(lead + x.shape[1:])
