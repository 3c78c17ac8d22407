"""From raw head outputs to proposals and detections, with static shapes.

Shape shorthand: B images, L levels, N_l anchors on level l, P proposals
per image, R RoIs per image, K classes including background (label 0),
D detections per image. Boxes are xyxy in input pixels.

Both functions follow torchvision's ``RegionProposalNetwork.filter_proposals``
and ``RoIHeads.postprocess_detections`` step for step; where torchvision
filters with boolean indexing we carry a ``valid`` mask instead, and where it
keeps "all boxes above a threshold" we keep a fixed-size top-k (see
``detect_boxes`` for why that is exact in practice and how to check it).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from mrcnn_jax.ops import boxes as box_ops
from mrcnn_jax.ops.nms import nms_batch


def level_candidates(logits, deltas, anchors, image_sizes, *, pre_nms_topk: int,
                     min_size: float = 1e-3, score_threshold: float = 0.0):
  """One level's proposal candidates before NMS: the ``pre_nms_topk``
  anchors of highest objectness, decoded and clipped.

  Args:
    logits: [B, N_l] objectness logits; deltas: [B, N_l, 4]; anchors: [N_l, 4]
    xyxy; image_sizes: [B, 2] true (h, w), float.

  Returns:
    (boxes [B, k, 4] xyxy, scores [B, k] sigmoid objectness, valid [B, k]),
    k = min(pre_nms_topk, N_l), by descending score; no gradient.
  """
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
  deltas = jax.lax.stop_gradient(deltas.astype(jnp.float32))
  k = min(pre_nms_topk, logits.shape[1])
  top_logits, top_idx = jax.lax.top_k(logits, k)  # [B, k]
  top_deltas = jnp.take_along_axis(deltas, top_idx[..., None], axis=1)
  top_anchors = jnp.asarray(anchors)[top_idx]  # [B, k, 4]
  boxes = box_ops.decode(top_deltas, top_anchors)
  boxes = box_ops.clip(boxes, image_sizes[:, None, :])
  scores = jax.nn.sigmoid(top_logits)
  valid = box_ops.min_side_ok(boxes, min_size) & (scores >= score_threshold)
  return boxes, scores, valid


def rpn_proposals(objectness_per_level: Sequence, deltas_per_level: Sequence,
                  anchors_per_level: Sequence, image_sizes, *, pre_nms_topk: int,
                  post_nms_topk: int, nms_threshold: float = 0.7,
                  min_size: float = 1e-3, score_threshold: float = 0.0,
                  per_image_nms: bool = False):
  """RPN outputs -> top proposals per image.

  Args:
    objectness_per_level: L arrays [B, N_l] of logits.
    deltas_per_level: L arrays [B, N_l, 4] (box coder weights 1, 1, 1, 1).
    anchors_per_level: L arrays [N_l, 4] xyxy.
    image_sizes: [B, 2] true (h, w) of each image; proposals are clipped to it.
    pre_nms_topk: candidates per level before NMS.
    post_nms_topk: P, proposals kept per image over all levels.
    per_image_nms: see ``detect_boxes``.

  Returns:
    dict with ``boxes`` [B, P, 4], ``scores`` [B, P] (sigmoid objectness),
    ``valid`` [B, P] bool. Sorted by descending score; padding at the end.
    Proposals carry no gradient.
  """
  all_boxes, all_scores, all_valid = [], [], []
  for logits, deltas, anchors in zip(objectness_per_level, deltas_per_level,
                                     anchors_per_level):
    boxes, scores, valid = level_candidates(logits, deltas, anchors, image_sizes,
                                            pre_nms_topk=pre_nms_topk, min_size=min_size,
                                            score_threshold=score_threshold)
    keep_n = min(post_nms_topk, boxes.shape[1])
    idx, kvalid = nms_batch(boxes, scores, nms_threshold, keep_n, valid,
                            per_image=per_image_nms)
    all_boxes.append(jnp.take_along_axis(boxes, idx[..., None], axis=1))
    all_scores.append(jnp.take_along_axis(scores, idx, axis=1))
    all_valid.append(kvalid)
  boxes = jnp.concatenate(all_boxes, axis=1)
  scores = jnp.concatenate(all_scores, axis=1)
  valid = jnp.concatenate(all_valid, axis=1)
  p = min(post_nms_topk, boxes.shape[1])
  # Merge levels: the best P survivors over all levels (invalid sort last).
  _, top = jax.lax.top_k(jnp.where(valid, scores, -1.0), p)
  out = {
      "boxes": jnp.take_along_axis(boxes, top[..., None], axis=1),
      "scores": jnp.take_along_axis(scores, top, axis=1),
      "valid": jnp.take_along_axis(valid, top, axis=1),
  }
  if p < post_nms_topk:  # pad to the static size promised
    pad = post_nms_topk - p
    out = {k: jnp.pad(v, ((0, 0), (0, pad)) + ((0, 0),) * (v.ndim - 2))
           for k, v in out.items()}
  return out


def detect_boxes(class_logits, box_deltas, proposals, proposals_valid, image_sizes, *,
                 bbox_reg_weights=(10.0, 10.0, 5.0, 5.0), score_threshold: float = 0.05,
                 nms_threshold: float = 0.5, detections_per_image: int = 100,
                 min_size: float = 1e-2, candidates_per_image: int = 4000,
                 per_image_nms: bool = False):
  """Box-head outputs -> final detections per image.

  Args:
    class_logits: [B, R, K].
    box_deltas: [B, R, K, 4] class-specific deltas.
    proposals: [B, R, 4] xyxy; proposals_valid [B, R].
    image_sizes: [B, 2] true (h, w).
    candidates_per_image: how many (box, class) candidates above the score
      threshold enter class-aware NMS, best first.
    per_image_nms: False (training, evaluation, predict): one ``vmap``ped
      NMS loop for the batch. True: one loop per image (``ops.nms.
      nms_per_image``), the same results; only ``mrcnn_jax.export`` sets it,
      for ONNX, whose converter cannot translate the vmapped loop's batched
      scatter.

  Greedy NMS decides a box's fate from higher-scoring boxes only, so NMS over
  the best ``candidates_per_image`` candidates keeps exactly the survivors
  that NMS over all candidates keeps among them. The top D of those are
  torchvision's top D whenever at least D survive, or whenever no more than
  ``candidates_per_image`` candidates pass the threshold. ``num_candidates``
  in the output lets a caller check the second condition.

  Returns:
    dict with ``boxes`` [B, D, 4], ``scores`` [B, D], ``labels`` [B, D] int32
    (1..K-1), ``valid`` [B, D] bool, ``num_candidates`` [B] int32.
  """
  b, r, k = class_logits.shape
  probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)
  boxes = box_ops.decode(box_deltas.astype(jnp.float32), proposals[:, :, None, :],
                         weights=bbox_reg_weights)  # [B, R, K, 4]
  boxes = box_ops.clip(boxes, image_sizes[:, None, None, :])
  # Drop the background column; flatten (RoI, class) in torchvision's order.
  boxes = boxes[:, :, 1:].reshape(b, r * (k - 1), 4)
  scores = probs[:, :, 1:].reshape(b, r * (k - 1))
  labels = jnp.broadcast_to(jnp.arange(1, k, dtype=jnp.int32), (b, r, k - 1)).reshape(b, -1)
  valid = (jnp.repeat(proposals_valid, k - 1, axis=1) & (scores > score_threshold)
           & box_ops.min_side_ok(boxes, min_size))
  num_candidates = valid.sum(axis=1).astype(jnp.int32)
  n = min(candidates_per_image, r * (k - 1))
  # Candidates in descending score; top_k breaks ties by lower index, like a
  # stable sort, so the flattening order above is preserved among equals.
  _, cand = jax.lax.top_k(jnp.where(valid, scores, -1.0), n)
  cboxes = jnp.take_along_axis(boxes, cand[..., None], axis=1)
  cscores = jnp.take_along_axis(scores, cand, axis=1)
  clabels = jnp.take_along_axis(labels, cand, axis=1)
  cvalid = jnp.take_along_axis(valid, cand, axis=1)
  idx, dvalid = nms_batch(cboxes, cscores, nms_threshold, detections_per_image, cvalid,
                          classes=clabels, per_image=per_image_nms)
  d_boxes = jnp.take_along_axis(cboxes, idx[..., None], axis=1)
  return {
      "boxes": jnp.where(dvalid[..., None], d_boxes, 0.0),
      "scores": jnp.where(dvalid, jnp.take_along_axis(cscores, idx, axis=1), 0.0),
      "labels": jnp.where(dvalid, jnp.take_along_axis(clabels, idx, axis=1), 0),
      "valid": dvalid,
      "num_candidates": num_candidates,
  }
