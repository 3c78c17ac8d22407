"""Mask R-CNN: a thin composition of parts given to it.

Shape shorthand: B images, (H, W) padded canvas, L feature levels, P
proposals per image, R sampled RoIs per image, D detections per image, K
classes with background, M mask size.

The parts (``build_model`` assembles them from ``config.model``):

  backbone   images [B, H, W, 3] -> feature maps (``resnet.ResNet``: C2..C5)
  neck       feature maps -> feature maps (``fpn.FPN``: P2..P6), or None
  rpn        ``rpn.RPN``: objectness and deltas, anchors, proposals, targets
  roi_sampler  ``roi_heads.RoISampler``: the RoIs the heads train on
  box_head   ``roi_heads.BoxRoIHead``: class logits, deltas, detections
  mask_head, keypoint_head   instance heads (``roi_heads`` docstring), each
             optional: they add per-detection outputs and their own losses

Anything that is not learnable (anchors, proposal selection, RoIAlign, NMS,
target assignment, losses) is a pure function of ``mrcnn_jax.ops`` that the
parts call. Inference (``__call__``) is one static-shape program:

  images, image_sizes -> features -> RPN -> P proposals (+ valid)
    -> box head -> D detections (+ valid) -> each instance head on the
       detections (masks: M x M probabilities of each detection's class).
"""

from __future__ import annotations

from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrcnn_jax.input_spec import SIZE_DIVISIBILITY
from mrcnn_jax.model.roi_heads import BoxRoIHead, RoISampler
from mrcnn_jax.model.rpn import RPN

# Fields of ``MaskRCNN`` that hold instance heads, in the order they run.
INSTANCE_HEADS = ("mask_head", "keypoint_head")


def check_inputs(images, image_sizes):
  """Raises a clear error for inputs the model cannot take."""
  if not hasattr(images, "shape") or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
        f"images must be a [B, H, W, 3] array (NHWC, RGB); got shape "
        f"{getattr(images, 'shape', type(images))}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(
        f"images must be floating point, normalised (see mrcnn_jax.preprocess); got "
        f"dtype {images.dtype}")
  h, w = images.shape[1:3]
  if h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
    raise ValueError(
        f"image canvas {h}x{w} must be padded to a multiple of {SIZE_DIVISIBILITY} "
        "(see mrcnn_jax.preprocess)")
  if image_sizes is None or tuple(image_sizes.shape) != (images.shape[0], 2):
    raise ValueError(
        f"image_sizes must be [B, 2] (true h, w of each image) with B={images.shape[0]}; "
        f"got {None if image_sizes is None else image_sizes.shape}")


class MaskRCNN(nn.Module):
  backbone: nn.Module
  neck: Optional[nn.Module]
  rpn: RPN
  roi_sampler: RoISampler
  box_head: BoxRoIHead
  mask_head: Optional[nn.Module] = None
  keypoint_head: Optional[nn.Module] = None

  def instance_heads(self):
    return [getattr(self, f) for f in INSTANCE_HEADS if getattr(self, f) is not None]

  # ---- stages, each usable on its own (notebooks, tests, training) --------

  def features(self, images, train: bool = False):
    """Normalised images [B, H, W, 3] -> feature maps (FPN: [P2..P6])."""
    feats = self.backbone(images, train=train)
    return feats if self.neck is None else self.neck(feats, train=train)

  def rpn_outputs(self, features):
    """-> (objectness logits per level [B, N_l], deltas per level [B, N_l, 4])."""
    return self.rpn(features)

  def proposals(self, features, canvas_size, image_sizes, objectness, deltas,
                train: bool = False):
    return self.rpn.proposals(features, canvas_size, image_sizes, objectness, deltas, train)

  def box_outputs(self, features, rois, canvas_size, train: bool = False):
    """RoIs [B, R, 4] -> class logits [B, R, K], deltas [B, R, K, 4]."""
    return self.box_head(features, rois, canvas_size, train=train)

  def mask_outputs(self, features, rois, canvas_size, batch_index=None, train: bool = False,
                   count=None):
    """RoIs [B, R, 4] -> mask logits [B, R, M, M, K] (K = 1 if class-agnostic);
    or packed RoIs [N, 4] of images ``batch_index`` [N] -> [N, M, M, K] (with
    ``count``, the filled first ones: ``MaskRoIHead``)."""
    return self.mask_head(features, rois, canvas_size, batch_index, train=train, count=count)

  # ---- inference -----------------------------------------------------------

  def __call__(self, images, image_sizes):
    """Inference on a padded batch.

    Args:
      images: [B, H, W, 3] float, normalised, H and W multiples of 32.
      image_sizes: [B, 2] int, true (h, w) of each image inside the canvas.

    Returns:
      dict: ``boxes`` [B, D, 4] xyxy in input pixels, ``scores`` [B, D],
      ``labels`` [B, D] int32 (1..K-1), ``valid`` [B, D] bool, each instance
      head's outputs (``masks`` [B, D, M, M] float32 probabilities of the
      detected class), plus ``proposals`` / ``proposals_valid`` [B, P, ...]
      and ``num_candidates`` [B] (see ``ops.postprocess.detect_boxes``).
    """
    stages = self.inference_stages(images, image_sizes)
    dets = stages["detections"]
    dets["proposals"] = stages["proposals"]["boxes"]
    dets["proposals_valid"] = stages["proposals"]["valid"]
    return dets

  def inference_stages(self, images, image_sizes):
    """Inference with every stage's result kept (``__call__`` returns the
    detections of it; under jit the rest costs nothing there). For looking
    inside the model (``mrcnn_jax.stages``, the notebooks).

    Returns a dict: ``features`` (list of [B, h_l, w_l, C]), ``rpn_objectness``
    (list of [B, N_l] logits), ``rpn_deltas`` (list of [B, N_l, 4]),
    ``anchors`` (list of [N_l, 4] xyxy), ``proposals`` (``boxes`` [B, P, 4],
    ``scores``, ``valid``), ``class_logits`` [B, P, K], ``box_deltas``
    [B, P, K, 4] and ``detections`` (as ``__call__``, without the proposals).
    """
    check_inputs(images, image_sizes)
    canvas = tuple(images.shape[1:3])
    image_sizes = jnp.asarray(image_sizes, jnp.float32)
    feats = self.features(images)
    objectness, deltas = self.rpn_outputs(feats)
    props = self.proposals(feats, canvas, image_sizes, objectness, deltas)
    class_logits, box_deltas = self.box_outputs(feats, props["boxes"], canvas)
    dets = self.box_head.detect(class_logits, box_deltas, props, image_sizes)
    for head in self.instance_heads():
      dets.update(head.predict(feats, canvas, dets))
    return {"features": list(feats), "rpn_objectness": objectness, "rpn_deltas": deltas,
            "anchors": [jnp.asarray(a) for a in self.rpn.anchors(canvas, feats)],
            "proposals": props, "class_logits": class_logits, "box_deltas": box_deltas,
            "detections": dets}

  def initialize(self, images, image_sizes):
    """Creates every variable: each part that has parameters called once,
    the RoI heads on one whole-canvas RoI per image, without the selection
    work between the parts (anchors, proposals, NMS, detection). For
    ``model.init(..., method=MaskRCNN.initialize)``: the same variables as
    initialising through ``__call__`` (Flax derives each parameter's key from
    its module path, not from the order of the calls; tests/test_model.py),
    traced in a fraction of the time (the shapes model's
    ``variables_template``: 1.3-1.7 s against 3.3-3.5 s). The compilation of
    the initialisation is no shorter (about 12 s for the shapes model on 2
    cores): XLA drops the unused forward work either way, and what remains
    is each parameter's random draw."""
    check_inputs(images, image_sizes)
    canvas = tuple(images.shape[1:3])
    feats = self.features(images)
    self.rpn_outputs(feats)
    whole = jnp.asarray([0.0, 0.0, canvas[1], canvas[0]], jnp.float32)
    rois = jnp.broadcast_to(whole, (images.shape[0], 1, 4))
    self.box_outputs(feats, rois, canvas)
    for head in self.instance_heads():
      head(feats, rois, canvas)
    return None

  # ---- training --------------------------------------------------------------

  def num_mask_slots(self, batch_size: int) -> int:
    """Mask head RoIs per step on one device (``MaskRoIHead.num_slots``)."""
    return self.mask_head.num_slots(batch_size, self.roi_sampler.positive_slots)

  def sample_targets(self, features, canvas_size, image_sizes, objectness, deltas,
                     gt: Mapping, rng, image_index):
    """The parameter-free middle of a training step: anchors and their RPN
    targets, proposals, sampled RoIs with box targets, and which RoIs are
    candidates for the instance heads (``positive_candidates`` [B, R *
    positive fraction]). Gradients do not flow through any of it.

    Args as ``train_outputs``, plus the ``features`` (for their grid sizes)
    and the RPN's per-level ``objectness`` and ``deltas``.
    """
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(rng, i), 2))(image_index)
    out = self.rpn.targets(canvas_size, features, gt["boxes"], gt["valid"], keys[:, 0])
    props = self.proposals(features, canvas_size, image_sizes,
                           [jax.lax.stop_gradient(o) for o in objectness],
                           [jax.lax.stop_gradient(d) for d in deltas], train=True)
    out.update(self.roi_sampler(props, gt, keys[:, 1], self.box_head.bbox_reg_weights))
    out["num_proposals"] = props["valid"].sum(axis=1)
    return out

  def train_outputs(self, images, image_sizes, gt: Mapping, rng, image_index=None):
    """Forward pass for training: head outputs next to their targets.

    Args:
      images [B, H, W, 3]; image_sizes [B, 2]; gt the ground truth by name:
      ``boxes`` [B, G, 4] xyxy, ``labels`` [B, G] (1..K-1), ``valid`` [B, G],
      ``masks`` [B, G, S, S] (each mask cropped to its box, see
      ``ops.targets.mask_targets``), and what other instance heads read;
      rng a PRNG key; image_index [B] int, a global index of each image used
      to derive its sampling key, so that splitting a batch over devices
      samples the same anchors and RoIs as one device would.

    Returns a dict of arrays that ``losses`` turns into the named losses: the
    targets of ``sample_targets``, the heads' outputs (``rpn_objectness``,
    ``rpn_deltas`` over every anchor, without gradient; the same at the
    sampled anchors, ``rpn_sampled_objectness`` [B, K] and
    ``rpn_sampled_deltas``, which the losses read; ``class_logits``,
    ``box_deltas``) and each instance
    head's ``train_outputs`` (the mask head's ``mask_logits`` [N, M, M, K]
    for the packed mask RoIs, N = ``num_mask_slots(B)``, valid where
    ``mask_valid``).
    """
    check_inputs(images, image_sizes)
    canvas = tuple(images.shape[1:3])
    b = images.shape[0]
    image_sizes = jnp.asarray(image_sizes, jnp.float32)
    gt = {k: jnp.asarray(v) for k, v in gt.items()}
    if image_index is None:
      image_index = jnp.arange(b)
    feats = self.features(images, train=True)
    objectness, deltas = self.rpn_outputs(feats)
    out = self.sample_targets(feats, canvas, image_sizes, objectness, deltas, gt, rng,
                              image_index)
    # The RPN losses read the head at the sampled anchors, computed there
    # again (``RPN.at_anchors``): the gradient stays off the dense head.
    out["rpn_objectness"] = jax.lax.stop_gradient(jnp.concatenate(objectness, axis=1))
    out["rpn_deltas"] = jax.lax.stop_gradient(jnp.concatenate(deltas, axis=1))
    out["rpn_sampled_objectness"], out["rpn_sampled_deltas"] = self.rpn.at_anchors(
        feats, out["rpn_sampled_index"])
    out["class_logits"], out["box_deltas"] = self.box_outputs(feats, out["roi_boxes"], canvas,
                                                              train=True)
    # (Choosing the mask slot count from the positives at run time, one
    # lax.switch branch per count, made the shapes step 2.2x slower on
    # XLA:CPU, so the count is static.)
    for head in self.instance_heads():
      out.update(head.train_outputs(feats, canvas, out, gt))
    return out

  def losses(self, outputs) -> dict:
    """Named losses of ``train_outputs``, each averaged over the images."""
    num_images = outputs["roi_labels"].shape[0]
    losses = dict(self.rpn.losses(outputs))
    losses.update(self.box_head.losses(outputs))
    for head in self.instance_heads():
      losses.update(head.losses(outputs, num_images))
    return losses

  def train_losses(self, images, image_sizes, gt: Mapping, rng, image_index=None):
    """(named losses, ``train_outputs``) in one call, for the train step."""
    outputs = self.train_outputs(images, image_sizes, gt, rng, image_index)
    return self.losses(outputs), outputs
