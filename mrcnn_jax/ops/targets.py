"""Training targets: matching, balanced sampling, RPN / RoI / mask targets.

Shape shorthand: A anchors, G ground-truth slots (padded, with ``gt_valid``),
P proposals, R sampled RoIs, S ground-truth mask size (crop of the mask to
its box), M mask target size. All functions work on one image; vmap them
over the batch.

Sentinels: match labels are 1 (foreground), 0 (background) and -1 (ignored,
between the thresholds). ``matched_idx`` is always a valid index into the
ground truth (0 where nothing matched), so gathers never go out of range;
read it only where the label is 1.

Randomness comes from an explicit key: the same key gives the same sample.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mrcnn_jax.ops import boxes as box_ops
from mrcnn_jax.ops.roi_align import roi_align


def match(iou, gt_valid, fg_threshold: float, bg_threshold: float,
          allow_low_quality: bool):
  """torchvision's ``Matcher`` on an [A, G] IoU matrix.

  IoU >= fg -> 1; IoU < bg -> 0; in between -> -1. With
  ``allow_low_quality``, every anchor that has the best IoU for some ground
  truth becomes foreground too (matched to its own argmax ground truth, as
  torchvision does), provided that best IoU is > 0.

  Returns (labels [A] int32, matched_idx [A] int32, max_iou [A]).
  """
  iou = jnp.where(gt_valid[None, :], iou, -1.0)
  if iou.shape[1] == 0:
    a = iou.shape[0]
    return jnp.zeros((a,), jnp.int32), jnp.zeros((a,), jnp.int32), jnp.zeros((a,))
  max_iou = iou.max(axis=1)
  matched_idx = iou.argmax(axis=1).astype(jnp.int32)
  labels = jnp.where(max_iou >= fg_threshold, 1, jnp.where(max_iou < bg_threshold, 0, -1))
  if allow_low_quality:
    best_per_gt = iou.max(axis=0)  # [G]
    is_best = (iou == best_per_gt[None, :]) & gt_valid[None, :] & (best_per_gt[None, :] > 0)
    labels = jnp.where(is_best.any(axis=1), 1, labels)
  return labels.astype(jnp.int32), matched_idx, jnp.maximum(max_iou, 0.0)


def sample_balanced(labels, num_samples: int, positive_fraction: float, key, valid=None):
  """torchvision's ``BalancedPositiveNegativeSampler`` with static shapes.

  Picks at most ``int(num_samples * positive_fraction)`` positives (label 1)
  uniformly at random, then fills up to ``num_samples`` with negatives
  (label 0).

  Returns:
    (order [num_samples] int32 indices: the sampled positives first, then the
    sampled negatives, then padding; is_pos [num_samples] bool;
    is_sampled [num_samples] bool).
  """
  n = labels.shape[0]
  if valid is not None:
    labels = jnp.where(valid, labels, -1)
  pos = labels == 1
  neg = labels == 0
  max_pos = int(num_samples * positive_fraction)
  num_pos = jnp.minimum(pos.sum(), max_pos)
  num_neg = jnp.minimum(neg.sum(), num_samples - num_pos)
  r = jax.random.uniform(key, (n,))

  def smallest(candidates, k_max, count):
    """The ``count`` candidates with the smallest r, as a mask [n] (a top-k of
    at most ``k_max``: two full argsorts over every anchor cost 8x more on
    XLA:CPU and choose the same set)."""
    k_max = max(1, min(k_max, n))
    _, idx = jax.lax.top_k(-jnp.where(candidates, r, 2.0), k_max)
    return jnp.zeros((n,), bool).at[idx].set(jnp.arange(k_max) < count) & candidates

  take_pos = smallest(pos, max_pos, num_pos)
  take_neg = smallest(neg, num_samples, num_neg)
  # Priority: sampled positives (in random order), then sampled negatives.
  priority = jnp.where(take_pos, 3.0 + r, jnp.where(take_neg, 1.0 + r, -1.0))
  k = min(num_samples, n)
  prio, order = jax.lax.top_k(priority, k)
  is_sampled = prio >= 0
  is_pos = prio >= 3.0
  if k < num_samples:
    pad = num_samples - k
    order = jnp.pad(order, (0, pad))
    is_sampled = jnp.pad(is_sampled, (0, pad))
    is_pos = jnp.pad(is_pos, (0, pad))
  return order.astype(jnp.int32), is_pos, is_sampled


def rpn_targets(anchors, gt_boxes, gt_valid, key, *, fg_threshold=0.7, bg_threshold=0.3,
                num_samples=256, positive_fraction=0.5):
  """RPN targets for one image.

  Args:
    anchors: [A, 4] xyxy (all levels, concatenated in the head's order).
    gt_boxes: [G, 4] xyxy; gt_valid [G].

  Returns dict: ``labels`` [A] (1 / 0 / -1 after sampling: -1 = not
  sampled), ``deltas`` [A, 4] regression targets (coder weights 1),
  ``num_sampled`` scalar; and the same for the sampled anchors alone, K =
  ``num_samples``: ``sampled_index`` [K] (anchor indices, the positives
  first; 0 in unused rows), ``sampled_labels`` [K] (1 / 0, -1 in unused
  rows) and ``sampled_deltas`` [K, 4]. The losses need only these.
  """
  iou = box_ops.pairwise_iou(anchors, gt_boxes)
  labels, matched, _ = match(iou, gt_valid, fg_threshold, bg_threshold, True)
  order, is_pos, is_sampled = sample_balanced(labels, num_samples, positive_fraction, key)
  a = anchors.shape[0]
  sampled_labels = jnp.full((a,), -1, jnp.int32)
  sampled_labels = sampled_labels.at[jnp.where(is_sampled, order, a)].set(
      is_pos.astype(jnp.int32), mode="drop")
  deltas = box_ops.encode(gt_boxes[matched], anchors)
  index = jnp.where(is_sampled, order, 0)
  return {"labels": sampled_labels, "deltas": deltas,
          "num_sampled": is_sampled.sum().astype(jnp.float32),
          "sampled_index": index,
          "sampled_labels": jnp.where(is_sampled, is_pos.astype(jnp.int32), -1),
          "sampled_deltas": box_ops.encode(gt_boxes[matched[index]], anchors[index])}


def roi_targets(proposals, proposals_valid, gt_boxes, gt_labels, gt_valid, key, *,
                num_samples=512, positive_fraction=0.25, fg_threshold=0.5,
                bg_threshold=0.5, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0)):
  """Samples RoIs for the box/mask heads of one image.

  The ground-truth boxes are added to the proposals (so every object has at
  least one perfect positive), then matched at ``fg_threshold`` and sampled.

  Returns dict, R = num_samples, positives first:
    ``boxes`` [R, 4] RoIs; ``labels`` [R] class targets (0 = background);
    ``deltas`` [R, 4] regression targets; ``matched_idx`` [R] ground-truth
    index; ``is_pos`` [R]; ``valid`` [R] (False for padding when there are
    fewer candidates than R).
  """
  cand = jnp.concatenate([proposals, gt_boxes], axis=0)
  cand_valid = jnp.concatenate([proposals_valid, gt_valid], axis=0)
  iou = box_ops.pairwise_iou(cand, gt_boxes)
  labels, matched, _ = match(iou, gt_valid, fg_threshold, bg_threshold, False)
  order, is_pos, is_sampled = sample_balanced(labels, num_samples, positive_fraction, key,
                                              valid=cand_valid)
  rois = cand[order]
  m = matched[order]
  cls = jnp.where(is_pos, gt_labels[m], 0).astype(jnp.int32)
  deltas = box_ops.encode(gt_boxes[m], rois, bbox_reg_weights)
  return {"boxes": jax.lax.stop_gradient(rois), "labels": cls, "deltas": deltas,
          "matched_idx": m, "is_pos": is_pos, "valid": is_sampled}


def mask_targets(rois, matched_idx, gt_boxes, gt_masks, mask_size: int):
  """Mask targets of one image's RoIs from ground-truth masks cropped to their
  boxes.

  ``gt_masks[g]`` is an S x S crop of object g's mask covering its box
  (pipeline convention: crop pixel k is centred at x1 + (k + 0.5) * w / S).
  A RoI is mapped into that crop's pixel frame, u = (x - x1) * S / w, and
  pooled with aligned RoIAlign (pixel centres at k + 0.5) to M x M, then
  binarised at 0.5 as Detectron2 does. The crop is padded with one pixel of
  zeros first: outside its box an object has no mask, and without the pad
  RoIAlign would clamp to the crop's edge pixels (which touch the box, so
  are often foreground) and smear the mask one crop pixel outwards.

  Args:
    rois: [R, 4] xyxy; matched_idx [R]; gt_boxes [G, 4]; gt_masks [G, S, S].

  Returns:
    [R, M, M] float32 in {0, 1}.
  """
  s = gt_masks.shape[-1]
  g = gt_boxes[matched_idx]
  gw = jnp.maximum(g[:, 2] - g[:, 0], 1e-3)
  gh = jnp.maximum(g[:, 3] - g[:, 1], 1e-3)
  # +1: the zero pad shifts the crop's pixel frame by one.
  u = jnp.stack([(rois[:, 0] - g[:, 0]) * s / gw, (rois[:, 1] - g[:, 1]) * s / gh,
                 (rois[:, 2] - g[:, 0]) * s / gw, (rois[:, 3] - g[:, 1]) * s / gh], axis=-1) + 1.0
  masks = gt_masks[matched_idx].astype(jnp.float32)
  masks = jnp.pad(masks, ((0, 0), (1, 1), (1, 1)))[..., None]  # [R, S+2, S+2, 1]

  def one(mask, box):
    return roi_align(mask, box[None], mask_size, spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)[0, :, :, 0]

  soft = jax.vmap(one)(masks, u)
  return (soft >= 0.5).astype(jnp.float32)


def pack_positive_rois(is_pos, num_slots: int):
  """Chooses up to ``num_slots`` positive RoIs of a batch for the mask head.

  The mask head only needs positive RoIs, and how many an image has varies
  widely (a few for an image with one object, up to all of its positive
  slots in a crowd). Giving every image its maximum wastes most of the head's
  computation; packing the batch's positives into one shared set of
  ``num_slots`` slots does not. Slots go round-robin -- every image's j-th
  positive before any image's (j + 1)-th -- so when the batch has more
  positives than slots, the ones left out are spread over the images, and
  since each image's positives come in random order (``sample_balanced``),
  they are a random subset of that image's.

  Args:
    is_pos: [B, R] bool, positives of each image's sampled RoIs.
    num_slots: N, static.

  Returns:
    (batch_index [N] int32, roi_index [N] int32, valid [N] bool): slot n holds
    RoI ``roi_index[n]`` of image ``batch_index[n]`` when ``valid[n]``; the
    order is round-robin.
  """
  b, r = is_pos.shape
  j = jnp.arange(r, dtype=jnp.int32)[None, :]
  i = jnp.arange(b, dtype=jnp.int32)[:, None]
  # Larger is earlier: image i's j-th RoI gets -(j * B + i); non-positives
  # rank below every positive.
  none = -(b * r + 1)
  priority = jnp.where(is_pos, -(j * b + i), none).reshape(-1)
  k = min(num_slots, b * r)
  prio, flat_idx = jax.lax.top_k(priority, k)
  valid = prio > none
  batch_index, roi_index = flat_idx // r, flat_idx % r
  if k < num_slots:
    pad = (0, num_slots - k)
    batch_index, roi_index, valid = (jnp.pad(batch_index, pad), jnp.pad(roi_index, pad),
                                     jnp.pad(valid, pad))
  return batch_index.astype(jnp.int32), roi_index.astype(jnp.int32), valid
