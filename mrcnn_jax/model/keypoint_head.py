"""Keypoint R-CNN's head as a plug-in instance head (``MaskRCNN.keypoint_head``).

Shape shorthand: B images, D detections per image, N packed RoIs of the
batch, K keypoint types, m pooled RoI size (14), S = 4m heatmap size (56),
G ground-truth slots per image.

``KeypointHead`` holds the learnable layers, torchvision's
``KeypointRCNNHeads`` + ``KeypointRCNNPredictor``: 3x3 convs (8 x 512) with
ReLU, a 4x4 stride-2 transposed convolution (padding 1) to K maps at 2m,
and bilinear 2x upsampling (``align_corners=False``) to S = 4m.
``KeypointRoIHead`` is the part: pooling, the training targets and loss
(``ops.keypoints``), and decoding heatmaps into keypoints at inference.
Field defaults are torchvision's ``keypointrcnn_resnet50_fpn``;
``model.config`` reads them into ``config.model.roi_heads.keypoint``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mrcnn_jax.model.heads import _conv_stack, _flatten_rois
from mrcnn_jax.model.layers import apply_head
from mrcnn_jax.model.roi_heads import MaskRoIHead, Pooler
from mrcnn_jax.ops import keypoints as kp_ops
from mrcnn_jax.ops.conv import conv2d
from mrcnn_jax.ops import targets as target_ops

_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# Transposed convolution, kernel 4, stride 2, padding 1, by output phase:
# output row 2i + p reads input rows i + d (d = -1, 0, 1) through kernel row
# _PHASE_TAP[p][d + 1] (4: no tap). From y = 2 * (input row) - 1 + (kernel row).
_PHASE_TAP = np.array([[3, 1, 4], [4, 2, 0]])


def keypoint_predictor(x, kernel, bias):
  """[N, m, m, C] -> [N, 4m, 4m, K]: torchvision's ``KeypointRCNNPredictor``.

  ``kernel`` [4, 4, C, K] is PyTorch's ``ConvTranspose2d.weight[c, k, a,
  b]`` at [a, b, c, k]. The transposed convolution (stride 2, padding 1) is
  written as one 3x3 convolution with 4K outputs, one K per output phase
  (row parity, column parity), followed by depth-to-space: each output
  pixel of phase (p, q) sums the 2 x 2 input pixels and kernel taps that
  reach it (``_PHASE_TAP``). Same values as the dilated form, and the
  gradients are ordinary convolution gradients (``ops.conv``, fast on
  XLA:CPU). The 2x bilinear upsampling is a fixed matrix on each axis
  (``ops.keypoints.upsample2x_matrix``).
  """
  n, m, _, c = x.shape
  k = kernel.shape[-1]
  taps = jnp.pad(kernel.astype(x.dtype), ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap 4: zeros
  idx = _PHASE_TAP.T  # [d + 1, p]
  k3 = taps[idx[:, None, :, None], idx[None, :, None, :]]  # [dy, dx, p, q, C, K]
  k3 = jnp.transpose(k3, (0, 1, 4, 2, 3, 5)).reshape(3, 3, c, 4 * k)
  y = conv2d(x, k3, stride=1, padding=((1, 1), (1, 1)))
  y = y.reshape(n, m, m, 2, 2, k) + bias.astype(x.dtype)
  y = jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(n, 2 * m, 2 * m, k)
  up = jnp.asarray(kp_ops.upsample2x_matrix(2 * m), y.dtype)
  return jnp.einsum("yh,nhwk,xw->nyxk", up, y, up)


class KeypointHead(nn.Module):
  """Pooled RoI features [..., m, m, C] -> heatmap logits [..., 4m, 4m, K];
  the leading axes are [B, D] or a packed [N]. Parameters ``conv_fcn{i}``
  and ``kps_score_lowres`` (torchvision's names)."""
  num_keypoints: int = 17
  conv_dims: Sequence[int] = (512,) * 8
  norm: Optional[str] = None
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    lead = x.shape[:-3]
    x = _conv_stack(_flatten_rois(x, self.dtype), self.conv_dims, self.norm, self.dtype,
                    "conv_fcn", train, self.axis_name)
    c = x.shape[-1]
    kernel = self.param("kps_score_lowres_kernel", _kaiming_fan_out,
                        (4, 4, c, self.num_keypoints), jnp.float32)
    bias = self.param("kps_score_lowres_bias", nn.initializers.zeros,
                      (self.num_keypoints,), jnp.float32)
    x = keypoint_predictor(x, kernel, bias)
    return x.reshape(lead + x.shape[1:])


class KeypointRoIHead(nn.Module):
  """Keypoint branch: pooled RoI features -> ``head`` -> K heatmaps per RoI.

  Inference: on the detections, decoded by ``ops.keypoints.
  heatmaps_to_keypoints`` (torchvision's semantics) into ``keypoints`` [B,
  D, K, 3] (x, y, 1) in input pixels, ``keypoint_scores`` [B, D, K] (the
  heatmap logit at the keypoint) and ``keypoints_exact`` [B, D] (the
  decoding's certificate held for all K maps).

  Training: like the mask head, on the batch's positive RoIs packed into
  ``rois_per_image`` slots per image (None: every positive slot), and with
  ``chunk`` on the filled slots only (``MaskRoIHead``); targets from
  ``gt["keypoints"]`` [B, G, K, 3] (x, y, v) in input pixels.
  """
  head: nn.Module
  pooler: Pooler = Pooler()
  pool_size: int = 14
  rois_per_image: Optional[int] = None
  chunk: int = 0
  decode_cells: int = 8

  def __call__(self, features, rois, canvas_size, batch_index=None, train: bool = False,
               count=None):
    """RoIs [B, D, 4] -> logits [B, D, S, S, K]; or packed RoIs [N, 4] of
    images ``batch_index`` [N] -> [N, S, S, K] (with ``count`` and ``chunk``:
    on the first ``count`` only, as ``MaskRoIHead``)."""
    x = self.pooler(features, rois, canvas_size, self.pool_size, batch_index)
    return apply_head(self.head, x, count, self.chunk, train=train)

  def num_slots(self, batch_size: int, positive_slots: int) -> int:
    return MaskRoIHead.num_slots(self, batch_size, positive_slots)

  def predict(self, features, canvas_size, detections) -> dict:
    logits = self(features, detections["boxes"], canvas_size)  # [B, D, S, S, K]
    b, d = logits.shape[:2]
    kps, scores, exact = kp_ops.heatmaps_to_keypoints(
        logits.reshape((b * d,) + logits.shape[2:]), detections["boxes"].reshape(b * d, 4),
        max_size=max(canvas_size), num_cells=self.decode_cells)
    k = kps.shape[1]
    return {"keypoints": kps.reshape(b, d, k, 3), "keypoint_scores": scores.reshape(b, d, k),
            "keypoints_exact": exact.reshape(b, d, k).all(axis=-1)}

  def train_outputs(self, features, canvas_size, targets, gt) -> dict:
    """The head on the batch's packed positive RoIs, with their targets."""
    b, g = gt["boxes"].shape[:2]
    if "keypoints" not in gt:
      raise ValueError("the keypoint head needs ground-truth keypoints (batch field "
                       "gt_keypoints [B, G, K, 3]); does the dataset have keypoints and "
                       "config.model.keypoint_on set the pipeline to read them?")
    cand = targets["positive_candidates"]
    img, slot, valid = target_ops.pack_positive_rois(cand, self.num_slots(b, cand.shape[1]))
    rois = targets["roi_boxes"][img, slot]
    logits = self(features, rois, canvas_size, img, train=True,
                  count=valid.sum())  # [N, S, S, K]; the filled slots first
    gt_kp = gt["keypoints"].reshape((b * g,) + gt["keypoints"].shape[2:])
    kp = gt_kp[img * g + targets["roi_matched_idx"][img, slot]]
    t, v = kp_ops.keypoint_targets(kp, rois, logits.shape[1])
    return {
        "keypoint_logits": logits,
        "keypoint_targets": t,
        "keypoint_valid": v & valid[:, None],
        "num_keypoint_rois_left_out": cand.sum() - valid.sum(),
    }

  @staticmethod
  def losses(outputs, num_images: int) -> dict:
    del num_images  # torchvision's normalisation: all valid keypoints of the batch
    return {"loss_keypoint": kp_ops.keypoint_loss(
        outputs["keypoint_logits"], outputs["keypoint_targets"], outputs["keypoint_valid"])}
