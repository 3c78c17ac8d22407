"""Mask R-CNN losses as plain functions of model outputs and targets.

Shape shorthand: B images, A anchors, R sampled RoIs, N mask RoIs (the
batch's positives, packed), K classes with background, M mask size.

Every loss is normalised per image and then averaged over the images, so a
batch split over devices and averaged with ``pmean`` gives exactly the loss
(and gradient) of the whole batch on one device. (torchvision normalises by
the batch's total count instead; the two agree in expectation.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_l1(x, beta: float):
  """Huber-style smooth L1 with transition at ``beta`` (beta=0: plain L1)."""
  ax = jnp.abs(x)
  if beta <= 0:
    return ax
  return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def sigmoid_bce(logits, targets):
  """Numerically stable binary cross-entropy with logits, elementwise."""
  return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _per_image_mean(total, count):
  return jnp.mean(total / jnp.maximum(count, 1.0))


def rpn_losses(objectness, deltas, target_labels, target_deltas, beta: float = 1.0 / 9):
  """Args: objectness [B, A] logits, deltas [B, A, 4]; target_labels [B, A]
  (1 fg, 0 bg, -1 not sampled), target_deltas [B, A, 4].

  Returns (loss_rpn_cls, loss_rpn_box): both divided by each image's number
  of sampled anchors, as torchvision."""
  objectness = objectness.astype(jnp.float32)
  sampled = (target_labels >= 0).astype(jnp.float32)
  pos = (target_labels == 1).astype(jnp.float32)
  count = sampled.sum(axis=1)
  cls = (sigmoid_bce(objectness, pos) * sampled).sum(axis=1)
  box = (smooth_l1(deltas.astype(jnp.float32) - target_deltas, beta).sum(-1) * pos).sum(axis=1)
  return _per_image_mean(cls, count), _per_image_mean(box, count)


def box_losses(class_logits, box_deltas, labels, target_deltas, is_pos, valid,
               beta: float = 1.0 / 9):
  """Args: class_logits [B, R, K], box_deltas [B, R, K, 4]; labels [B, R]
  (0 = background), target_deltas [B, R, 4], is_pos / valid [B, R].

  Returns (loss_cls, loss_box): cross-entropy averaged over sampled RoIs;
  smooth L1 on the ground-truth class's deltas of positive RoIs, divided by
  the number of sampled RoIs (torchvision's normalisation)."""
  logp = jax.nn.log_softmax(class_logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  valid_f = valid.astype(jnp.float32)
  count = valid_f.sum(axis=1)
  cls = (nll * valid_f).sum(axis=1)
  pred = jnp.take_along_axis(box_deltas.astype(jnp.float32),
                             labels[..., None, None], axis=2)[:, :, 0]
  pos = (is_pos & valid).astype(jnp.float32)
  box = (smooth_l1(pred - target_deltas, beta).sum(-1) * pos).sum(axis=1)
  return _per_image_mean(cls, count), _per_image_mean(box, count)


def _mask_roi_mean(per_roi, valid, batch_index, num_images: int):
  """Per-RoI mask losses [N] averaged over each image's valid RoIs, then
  over the images (0 for an image with no positives)."""
  pos = valid.astype(jnp.float32)
  image_of = jax.nn.one_hot(batch_index, num_images, dtype=jnp.float32)  # [N, B]
  # Sums, not TF32 products (a GPU's default for float32 matmuls).
  hp = jax.lax.Precision.HIGHEST
  return _per_image_mean(jnp.matmul(per_roi * pos, image_of, precision=hp),
                         jnp.matmul(pos, image_of, precision=hp))


def mask_loss(mask_logits, labels, targets, valid, batch_index, num_images: int):
  """Per-pixel sigmoid BCE on the ground-truth class's channel only.

  Args: mask_logits [N, M, M, K] (K = 1 for class-agnostic heads) of N mask
  RoIs packed from the batch (``ops.targets.pack_positive_rois``), labels
  [N], targets [N, M, M] in {0, 1}, valid [N] (the slots holding a positive
  RoI), batch_index [N] (each RoI's image), num_images B.

  The other K - 1 channels get no gradient: classes do not compete, which is
  what decouples mask and class prediction in Mask R-CNN. Averaged over the
  pixels of each image's positive RoIs, then over the images (0 for an image
  with no positives), like the other losses.
  """
  if mask_logits.shape[-1] == 1:
    chosen = mask_logits[..., 0]
  else:
    chosen = jnp.take_along_axis(mask_logits, labels[:, None, None, None], axis=-1)[..., 0]
  per_roi = sigmoid_bce(chosen.astype(jnp.float32), targets).mean(axis=(1, 2))
  return _mask_roi_mean(per_roi, valid, batch_index, num_images)


def mask_softmax_loss(mask_logits, labels, targets, valid, batch_index, num_images: int):
  """The paper's multinomial baseline (its Table 2b): a per-pixel softmax
  over all K channels, channel 0 being background; a pixel's target class
  is the RoI's ground-truth class where its mask target is 1, background
  elsewhere. Every channel gets gradient, so classes compete for each pixel
  (as in FCN semantic segmentation).

  Args and normalisation as ``mask_loss``; mask_logits [N, M, M, K] with K
  the number of classes including background (no class-agnostic form).
  """
  if mask_logits.shape[-1] < 2:
    raise ValueError("mask_softmax_loss needs per-class mask logits (K >= 2 channels); a "
                     "class-agnostic head has one")
  logp = jax.nn.log_softmax(mask_logits.astype(jnp.float32), axis=-1)
  fg = jnp.take_along_axis(logp, labels[:, None, None, None], axis=-1)[..., 0]
  nll = -(targets * fg + (1.0 - targets) * logp[..., 0])
  return _mask_roi_mean(nll.mean(axis=(1, 2)), valid, batch_index, num_images)
