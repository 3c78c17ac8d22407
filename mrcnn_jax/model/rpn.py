"""Region proposal network: the learnable head and everything the RPN
decides (anchors, proposals, training targets, losses) in one part.

Shape shorthand: B images, L levels, N_l anchors on level l, A anchors per
location, P proposals per image, G ground-truth boxes per image.

The field defaults are torchvision's ``maskrcnn_resnet50_fpn`` settings and
the one place they are written: ``model.config`` reads them into
``config.model.rpn``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrcnn_jax.model.layers import Conv
from mrcnn_jax.ops import anchors as anchor_ops
from mrcnn_jax.ops import losses as loss_ops
from mrcnn_jax.ops import postprocess
from mrcnn_jax.ops import targets as target_ops
from mrcnn_jax.ops.roi_align import flatten_levels, weighted_gather

_normal001 = nn.initializers.normal(0.01)


class RPN(nn.Module):
  """Shared 3x3 conv(s) + ReLU, then objectness (A) and box deltas (4A) per
  location; parameters ``conv_{i}``, ``cls_logits``, ``bbox_pred``."""
  # anchors: one tuple of sizes and of aspect ratios per level
  anchor_sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,))
  aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),) * 5
  conv_depth: int = 1
  # proposals
  pre_nms_topk_train: int = 2000
  pre_nms_topk_test: int = 1000
  post_nms_topk_train: int = 2000
  post_nms_topk_test: int = 1000
  nms_threshold: float = 0.7
  min_size: float = 1e-3
  score_threshold: float = 0.0
  # one NMS loop per image instead of a vmapped one (same proposals): set by
  # mrcnn_jax.export for ONNX only; not a config field
  per_image_nms: bool = False
  # training targets
  fg_iou: float = 0.7
  bg_iou: float = 0.3
  batch_per_image: int = 256
  positive_fraction: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence):
    """-> (objectness logits per level [B, N_l], deltas per level [B, N_l, 4]),
    flattened in (y, x, a) order to match ``ops.anchors``."""
    num_anchors = anchor_ops.num_anchors_per_location(self.anchor_sizes[0],
                                                      self.aspect_ratios[0])
    # Every level has the same channels, so one stack serves them all.
    convs = [Conv(features[0].shape[-1], 3, dtype=self.dtype, kernel_init=_normal001,
                  name=f"conv_{i}") for i in range(self.conv_depth)]
    cls = Conv(num_anchors, 1, dtype=self.dtype, kernel_init=_normal001, name="cls_logits")
    box = Conv(4 * num_anchors, 1, dtype=self.dtype, kernel_init=_normal001, name="bbox_pred")
    logits, deltas = [], []
    for f in features:
      x = f
      for c in convs:
        x = nn.relu(c(x))
      b = x.shape[0]
      logits.append(cls(x).reshape(b, -1))
      deltas.append(box(x).reshape(b, -1, 4))
    return logits, deltas

  def at_anchors(self, features: Sequence, anchor_index):
    """The head's outputs at chosen anchors only: (objectness logits [B, K],
    deltas [B, K, 4]) for ``anchor_index`` [B, K], indices into all levels'
    anchors in ``__call__``'s order. Equal to ``__call__``'s outputs gathered
    at those indices, up to the order of summation (tests/test_rpn.py); only
    the parameters ``__call__`` made are read, so call that first (or apply
    with existing variables).

    Each anchor's outputs depend on the (2 d + 1)^2 feature vectors around
    its location (d = ``conv_depth`` 3x3 convolutions), so they are gathered
    and the convolutions become matrix products on those few rows. This is
    how the training losses read the RPN: they see only the sampled anchors
    (256 per image), and the gradient through this form is a few products
    on those rows and a scatter of their patches, where the gradient of the
    dense head is the full backward of its 3x3 convolutions over every level
    (about 0.7 s of the R50-FPN train step's 5.7 s on 2 CPU cores).
    """
    params = self.variables["params"]
    num_anchors = anchor_ops.num_anchors_per_location(self.anchor_sizes[0],
                                                      self.aspect_ratios[0])
    b, k = anchor_index.shape
    c = features[0].shape[-1]
    d = self.conv_depth
    grids = [tuple(f.shape[1:3]) for f in features]
    flat, per_image, first_pixel = flatten_levels(features)
    # Static per-level tables: first anchor, first pixel (above), height, width.
    first_anchor = np.cumsum([0] + [h * w * num_anchors for h, w in grids])
    level = jnp.sum(anchor_index[..., None] >= jnp.asarray(first_anchor[1:-1]), axis=-1)
    height = jnp.asarray([h for h, _ in grids])[level]
    width = jnp.asarray([w for _, w in grids])[level]
    local = anchor_index - jnp.asarray(first_anchor[:-1])[level]
    which = local % num_anchors
    y, x = (local // num_anchors) // width, (local // num_anchors) % width
    # The receptive field: (2d + 1)^2 taps around (y, x), zero outside the
    # map (the convolutions' zero padding).
    offsets = jnp.arange(-d, d + 1)
    ty = y[..., None, None] + offsets[:, None]            # [B, K, p, 1]
    tx = x[..., None, None] + offsets[None, :]            # [B, K, 1, p]
    h_, w_ = height[..., None, None], width[..., None, None]
    inside = (ty >= 0) & (ty < h_) & (tx >= 0) & (tx < w_)  # [B, K, p, p]
    pixel = (jnp.asarray(first_pixel)[level][..., None, None]
             + jnp.clip(ty, 0, h_ - 1) * w_ + jnp.clip(tx, 0, w_ - 1))
    p = 2 * d + 1
    # One row per tap, weight 0 outside the map; RoIAlign's pooling step, so
    # the backward accumulates the taps' gradients in float32 whatever the
    # features' dtype (a tap is read by up to 9 A anchors).
    rows = pixel + (jnp.arange(b) * per_image)[:, None, None, None]
    taps = weighted_gather(flat, rows.reshape(-1, 1),
                           inside.reshape(-1, 1).astype(jnp.float32))
    h = taps.reshape(b, k, p, p, c).astype(self.dtype)
    for i in range(d):
      kernel, bias = params[f"conv_{i}"]["kernel"], params[f"conv_{i}"]["bias"]
      s = h.shape[2] - 2
      # A valid 3x3 convolution over the taps: kernel rows (dy, dx, c).
      cols = jnp.concatenate([h[:, :, dy:dy + s, dx:dx + s] for dy in range(3)
                              for dx in range(3)], axis=-1)
      h = nn.relu(cols @ kernel.reshape(-1, kernel.shape[-1]).astype(self.dtype)
                  + bias.astype(self.dtype))
      # Positions outside the map are the next convolution's zero padding.
      h = jnp.where(inside[:, :, i + 1:p - i - 1, i + 1:p - i - 1, None], h, 0)
    h = h[:, :, 0, 0]                                     # [B, K, C']

    def one_by_one(name):
      kernel, bias = params[name]["kernel"], params[name]["bias"]
      return (h @ kernel.reshape(kernel.shape[-2:]).astype(self.dtype)
              + bias.astype(self.dtype))

    logits = jnp.take_along_axis(one_by_one("cls_logits"), which[..., None], axis=-1)[..., 0]
    deltas = one_by_one("bbox_pred").reshape(b, k, num_anchors, 4)
    deltas = jnp.take_along_axis(deltas, which[..., None, None], axis=2)[:, :, 0]
    return logits, deltas

  def anchors(self, canvas_size, features):
    """Anchors per level [N_l, 4] (numpy, static) for these feature grids."""
    if len(self.anchor_sizes) != len(features) or len(self.aspect_ratios) != len(features):
      raise ValueError(
          f"config.model.rpn: anchor_sizes ({len(self.anchor_sizes)}) and aspect_ratios "
          f"({len(self.aspect_ratios)}) need one entry per feature level ({len(features)})")
    grid_sizes = [tuple(f.shape[1:3]) for f in features]
    return anchor_ops.fpn_anchors(canvas_size, grid_sizes, self.anchor_sizes,
                                  self.aspect_ratios)

  def proposals(self, features, canvas_size, image_sizes, objectness, deltas,
                train: bool = False):
    """-> dict ``boxes`` [B, P, 4], ``scores``, ``valid`` (no gradient)."""
    return postprocess.rpn_proposals(
        objectness, deltas, self.anchors(canvas_size, features), image_sizes,
        pre_nms_topk=self.pre_nms_topk_train if train else self.pre_nms_topk_test,
        post_nms_topk=self.post_nms_topk_train if train else self.post_nms_topk_test,
        nms_threshold=self.nms_threshold, min_size=self.min_size,
        score_threshold=self.score_threshold, per_image_nms=self.per_image_nms)

  def targets(self, canvas_size, features, gt_boxes, gt_valid, keys):
    """Anchor labels [B, N] (1 fg, 0 bg, -1 ignored) and deltas [B, N, 4]
    over all levels, and the sampled anchors alone (``rpn_sampled_index``
    [B, K], ``rpn_sampled_labels``, ``rpn_sampled_target_deltas``: what the
    losses read, see ``ops.targets.rpn_targets``); ``keys`` [B] one
    sampling key per image."""
    anchors = jnp.concatenate([jnp.asarray(a) for a in self.anchors(canvas_size, features)],
                              axis=0)
    t = jax.vmap(lambda g, v, k: target_ops.rpn_targets(
        anchors, g, v, k, fg_threshold=self.fg_iou, bg_threshold=self.bg_iou,
        num_samples=self.batch_per_image, positive_fraction=self.positive_fraction))(
            gt_boxes, gt_valid, keys)
    return {"rpn_target_labels": t["labels"], "rpn_target_deltas": t["deltas"],
            "rpn_sampled_index": t["sampled_index"],
            "rpn_sampled_labels": t["sampled_labels"],
            "rpn_sampled_target_deltas": t["sampled_deltas"]}

  @staticmethod
  def losses(outputs) -> dict:
    """The two RPN losses from the head's outputs at the sampled anchors
    (``rpn_sampled_objectness`` [B, K], ``rpn_sampled_deltas`` [B, K, 4],
    from ``at_anchors``) and their targets."""
    cls, box = loss_ops.rpn_losses(
        outputs["rpn_sampled_objectness"], outputs["rpn_sampled_deltas"],
        outputs["rpn_sampled_labels"], outputs["rpn_sampled_target_deltas"])
    return {"loss_rpn_cls": cls, "loss_rpn_box": box}
