"""Looking inside Mask R-CNN one stage at a time (the notebooks): every
intermediate result of inference or of a training forward pass on one batch,
as numpy; the RPN's candidates before NMS; objectness and feature maps as
pictures' values; RoIAlign next to RoIWarp and RoIPool on an image.

Shape shorthand: B images, L levels, N_l anchors of level l (h_l * w_l * A,
flattened in (y, x, a) order), A anchors per location, k candidates per
level, P proposals, D detections, M mask size. Boxes are ``xyxy`` in pixels of
the network input (the resized, padded canvas) unless a name says otherwise.

No TensorFlow: batches may come from ``mrcnn_jax.preprocess`` or tf.data.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mrcnn_jax.ops import postprocess
from mrcnn_jax.ops.roi_align import roi_align, roi_warp
from mrcnn_jax.ops.roi_pool import roi_pool

__all__ = ["anchors", "channel_rms", "compare_poolers", "objectness_map", "run_stages",
           "run_train_outputs"]


def _with_candidates(module, images, image_sizes):
  """``MaskRCNN.inference_stages`` plus each level's candidates before NMS
  (the RPN's test-time ``pre_nms_topk``, the ones its NMS then thins)."""
  out = module.inference_stages(images, image_sizes)
  rpn = module.rpn
  sizes = jnp.asarray(image_sizes, jnp.float32)
  out["candidates"] = []
  for logits, deltas, level_anchors in zip(out["rpn_objectness"], out["rpn_deltas"],
                                           out["anchors"]):
    boxes, scores, valid = postprocess.level_candidates(
        logits, deltas, level_anchors, sizes, pre_nms_topk=rpn.pre_nms_topk_test,
        min_size=rpn.min_size, score_threshold=rpn.score_threshold)
    out["candidates"].append({"boxes": boxes, "scores": scores, "valid": valid})
  return out


@functools.lru_cache(maxsize=8)
def _stages_program(model):
  return jax.jit(lambda v, x, s: model.apply(v, x, s, method=_with_candidates))


def run_stages(model, variables, images, image_sizes) -> dict:
  """Inference on a padded batch with every stage kept, as numpy.

  Args:
    model: a ``MaskRCNN``; variables: its variables.
    images: [B, H, W, 3] float, normalised (``preprocess.prepare_batch`` or a
      tf.data batch); image_sizes: [B, 2] true (h, w) inside the canvas.

  Returns:
    ``MaskRCNN.inference_stages``'s dict (``features``, ``rpn_objectness``,
    ``rpn_deltas``, ``anchors``, ``proposals``, ``class_logits``,
    ``box_deltas``, ``detections``) plus ``candidates``: per level a dict of
    ``boxes`` [B, k, 4], ``scores`` [B, k] (sigmoid), ``valid`` [B, k], the
    top-k of the level before NMS.
  """
  return jax.device_get(_stages_program(model)(variables, images, image_sizes))


@functools.lru_cache(maxsize=8)
def _train_outputs_program(model):
  def fn(variables, images, sizes, gt, rng):
    return model.apply(variables, images, sizes, gt, rng, method=model.train_outputs)
  return jax.jit(fn)


def run_train_outputs(model, variables, batch: Mapping, rng) -> dict:
  """``MaskRCNN.train_outputs`` of one batch (a tf.data training batch with
  a single leading batch axis), as numpy: the RPN targets
  (``rpn_target_labels`` [B, sum N_l]: 1 positive, 0 negative, -1 not
  sampled; ``rpn_target_deltas``), the sampled RoIs (``roi_boxes`` [B, R,
  4], ``roi_labels``, ``roi_is_pos``, ``roi_valid``), the packed mask RoIs
  (``mask_rois`` [N, 4], ``mask_batch_index``, ``mask_targets`` [N, M, M],
  ``mask_valid``) and the heads' outputs next to them."""
  gt = {k[3:]: v for k, v in batch.items() if k.startswith("gt_")}
  out = _train_outputs_program(model)(variables, batch["image"], batch["image_size"], gt, rng)
  return jax.device_get(out)


def anchors(model, variables, canvas_size) -> list[np.ndarray]:
  """The anchors of every level, [N_l, 4] xyxy numpy, for a canvas (h, w):
  the feature grid sizes come from ``jax.eval_shape`` (nothing computed)."""
  x = jax.ShapeDtypeStruct((1,) + tuple(canvas_size) + (3,), jnp.float32)
  feats = jax.eval_shape(lambda v, im: model.apply(v, im, method=model.features), variables, x)
  return [np.asarray(a) for a in model.rpn.anchors(tuple(canvas_size), feats)]


def objectness_map(logits: np.ndarray, grid_size) -> np.ndarray:
  """One image's objectness logits of one level [N_l] -> [h_l, w_l], the
  highest probability (sigmoid) over the A anchors of each location."""
  h, w = (int(v) for v in grid_size)
  logits = np.asarray(logits, np.float32)
  if logits.size % (h * w):
    raise ValueError(f"objectness_map: {logits.size} logits do not split over a {h}x{w} grid")
  return (1.0 / (1.0 + np.exp(-logits.reshape(h, w, -1)))).max(axis=-1)


def channel_rms(feature_map: np.ndarray) -> np.ndarray:
  """[h, w, C] -> [h, w]: the root mean square over channels, one number per
  location to draw a feature map by."""
  f = np.asarray(feature_map, np.float32)
  return np.sqrt(np.mean(np.square(f), axis=-1))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _pool_image(image, boxes, stride: int, output_size: int, sampling_ratio: int):
  """``compare_poolers``' crops, one program."""
  h, w = image.shape[:2]
  fmap = image.reshape(h // stride, stride, w // stride, stride, -1).mean(axis=(1, 3))
  scale = 1.0 / stride
  return {
      "reference": roi_align(image, boxes, output_size, spatial_scale=1.0,
                             sampling_ratio=stride, aligned=True),
      "align": roi_align(fmap, boxes, output_size, spatial_scale=scale,
                         sampling_ratio=sampling_ratio, aligned=True),
      "warp": roi_warp(fmap, boxes, output_size, spatial_scale=scale,
                       sampling_ratio=sampling_ratio),
      "pool": roi_pool(fmap, boxes, output_size, spatial_scale=scale),
  }


def compare_poolers(image: np.ndarray, boxes_xyxy: np.ndarray, *, stride: int = 8,
                    output_size: int = 7, sampling_ratio: int = 2) -> dict:
  """What RoIAlign fixes, on an image: the image average-pooled by
  ``stride`` stands for a stride-``stride`` feature map; each box is pooled
  from it by RoIAlign (aligned, bilinear at exact positions), RoIWarp (the box
  rounded to the grid, then bilinear) and RoIPool (box and bins rounded, max),
  and compared with the box's true content: RoIAlign on the full-resolution
  image with ``stride`` x ``stride`` samples per bin (about two per pixel
  for bins of ``stride`` / 2 pixels or more).

  Args:
    image: [H, W, 3] float (any scale), H and W multiples of ``stride``.
    boxes_xyxy: [R, 4] in image pixels.

  Returns:
    dict of [R, S, S, 3] float32 crops ``reference``, ``align``, ``warp``,
    ``pool`` (S = ``output_size``) and ``error_align`` / ``error_warp`` /
    ``error_pool`` [R]: mean absolute difference from ``reference``.
  """
  image = np.asarray(image, np.float32)
  h, w = image.shape[:2]
  if image.ndim != 3 or h % stride or w % stride:
    raise ValueError(f"compare_poolers: image must be [H, W, C] with H and W multiples of "
                     f"stride={stride}, got {image.shape}")
  boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
  out = jax.device_get(_pool_image(image, boxes, stride, output_size, sampling_ratio))
  out = {k: np.asarray(v, np.float32) for k, v in out.items()}
  for k in ("align", "warp", "pool"):
    out[f"error_{k}"] = np.abs(out[k] - out["reference"]).mean(axis=(1, 2, 3))
  return out
