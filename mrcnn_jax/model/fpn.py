"""Feature Pyramid Network (Lin et al., 2017), torchvision's variant.

Shape shorthand: B images; input [C2..C5] with strides 4..32; output
[P2..P6], each [B, H_l, W_l, channels].

Lateral 1x1 convs (``inner_i``) and output 3x3 convs (``layer_i``), both
with bias; top-down pathway by nearest-neighbour upsampling to the lateral's
size; P6 = max-pool(P5, kernel 1, stride 2), i.e. every other pixel of P5.

``LastLevel`` is the other neck (``config.model.neck = "last"``): no
pyramid, the backbone's last map only.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mrcnn_jax.model.layers import Conv, make_norm, nearest_resize

_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # kaiming_uniform(a=1)


class FPN(nn.Module):
  channels: int = 256
  norm: Optional[str] = None
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None  # BatchNorm statistics synchronised over it

  @nn.compact
  def __call__(self, features: Sequence, train: bool = False):
    use_bias = self.norm in (None, "none", "")
    norm = make_norm(self.norm, train=train, dtype=self.dtype, axis_name=self.axis_name)

    def block(x, kernel, name):
      x = Conv(self.channels, kernel, use_bias=use_bias, dtype=self.dtype, kernel_init=_init,
               name=name)(x)
      return norm(name=f"{name}_norm")(x)

    n = len(features)
    last_inner = block(features[-1], 1, f"inner_{n - 1}")
    results = [block(last_inner, 3, f"layer_{n - 1}")]
    for i in range(n - 2, -1, -1):
      lateral = block(features[i], 1, f"inner_{i}")
      top_down = nearest_resize(last_inner, lateral.shape[1:3])
      last_inner = lateral + top_down
      results.insert(0, block(last_inner, 3, f"layer_{i}"))
    results.append(results[-1][:, ::2, ::2, :])  # P6: max_pool(k=1, s=2)
    return results


class LastLevel(nn.Module):
  """The neck of the single-level models (ResNet-C4 / -C5 in the Mask R-CNN
  paper): the backbone's last feature map alone, [C_last], for the RPN and
  RoI pooling. No parameters."""

  def __call__(self, features: Sequence, train: bool = False):
    del train
    return [features[-1]]
