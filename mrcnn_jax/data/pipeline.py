"""tf.data input pipeline: TFDS-style detection examples -> static-shape batches.

Shape shorthand: H x W the original image, Hc x Wc the static canvas, n the
objects of one example, N = ``max_instances``, S = ``gt_mask_size``,
``...`` the leading ``batch_dims`` (e.g. ``(devices, per_device_batch)``).

Input: each element of ``ds`` is a dict in the layout TFDS decodes
``mrcnn_shapes`` to (and that an adapter for another dataset should produce):

=====================  =========================================================
``image``              uint8 [H, W, 3], or its PNG/JPEG bytes (tf.string)
``image_id``           integer scalar
``objects/bbox``       float [n, 4], TFDS ``BBox``: normalised
                       ``(ymin, xmin, ymax, xmax)`` in continuous coordinates
``objects/label``      integer [n], 0-based class index (the pipeline adds 1)
``objects/mask``       uint8 [n, H, W, 1] or [n, H, W], nonzero = object; or
                       [n] PNG bytes (decoded here)
``objects/area``       number [n], optional: ranks objects when there are more
                       than N (box area if absent)
``objects/is_crowd``   bool [n], optional: COCO ``iscrowd`` regions. They never
                       become ground truth (so never positives); they are
                       dropped and counted in ``num_crowd``. Absent = no crowd.
``objects/keypoints``  float [n, K, 3] or [n, 3K], (x, y, v) in original
                       pixels, v = 0 unlabelled; read when ``num_keypoints``
                       is K > 0 (Keypoint R-CNN)
=====================  =========================================================

Other fields (``height``, ``objects/category_id``, ...) are ignored. Images
are decoded with ``tf.io.decode_image(channels=3)``: JPEG, PNG (also GIF, BMP,
WebP); grayscale, palette, CMYK JPEG and 16-bit PNG become RGB, an alpha
channel is dropped (not composited).

Decoding inside the pipeline (pass ``load_shapes(..., decode=False)`` or
``load_coco(..., decode=False)``) keeps the shuffle buffer small and spreads
the decoding over the parallel map; only the masks of the objects kept as
ground truth are decoded (not those of crowd, zero-area or surplus objects).
Everything here is TF ops (no ``py_function``): datasets check their data
when they are prepared.

Output: one dict per batch (numpy through :func:`numpy_batches`):

=================  ==============  ============================================
``image``          float32         [..., Hc, Wc, 3] normalised with the
                                   spec's mean/std, zero-padded bottom/right
``image_size``     int32 [..., 2]  (h, w) of the resized image inside the canvas
``orig_size``      int32 [..., 2]  (H, W) of the original image
``scale``          float32 [...]   resize factor (see "Resizing")
``image_id``       int32 [...]     -1 marks padding examples (only when
                                   ``drop_remainder=False``)
``gt_boxes``       float32         [..., N, 4] ``xyxy`` absolute pixels of the
                                   resized (and flipped) image; 0 for padding
``gt_labels``      int32 [..., N]  1..K, 0 for padding
``gt_valid``       bool [..., N]   True for real objects (a prefix of N)
``gt_masks``       float32         [..., N, S, S] in [0, 1], the object's mask
                                   cropped to its box; 0 for padding (not in
                                   the evaluation's input: ``gt_masks=False``)
``num_dropped``    int32 [...]     objects dropped for exceeding N (smallest
                                   areas go first)
``num_invalid``    int32 [...]     objects dropped for a zero-area box (after
                                   clipping to the image); crowd not included
``num_crowd``      int32 [...]     crowd objects dropped (``objects/is_crowd``)
``stream_index``   int64 [...]     the example's place in the input stream
                                   (see "Determinism and resuming"); -1 for
                                   padding examples
``gt_keypoints``   float32         [..., N, K, 3] (x, y, v) in pixels of the
                                   resized (and flipped) image, only with
                                   ``num_keypoints`` K > 0; unlabelled
                                   keypoints and padding are all 0. A flip
                                   mirrors x and swaps left and right
                                   (``keypoint_flip_map``: keypoint i takes
                                   the place of ``flip_map[i]``)
=================  ==============  ============================================

Sizes, canvases and normalisation are those of an
:class:`~mrcnn_jax.input_spec.InputSpec` (``InputSpec.from_config(
config.data)``), the rules ``predict`` and export follow too. With one canvas
every batch has the static shape above. With orientation buckets (e.g.
``canvases=((800, 1344), (1344, 800))``) a resized image whose width >= height
goes to the landscape canvas, the others to the portrait one
(``InputSpec.canvas_for``), and batches are grouped (``group_by_window`` keyed
by the canvas, window = batch size) so that every batch holds one canvas: the
``image`` shape is static per batch but differs between batches (its
``element_spec`` says ``[..., None, None, 3]``), so a jitted step compiles
once per canvas. Grouping reorders the stream slightly: a batch is emitted when
its bucket has filled, the other bucket keeps waiting.

Resizing (torchvision's ``GeneralizedRCNNTransform``): ``scale =
min(min_size / min(H, W), max_size / max(H, W))`` and the resized size
``floor(H * scale), floor(W * scale)``, both in float64, exactly as
``InputSpec.resized_size`` (see ``mrcnn_jax.input_spec``); the image is
resized bilinearly with half-pixel centres and no antialiasing
(``align_corners=False``). A continuous coordinate maps by the per-axis ratio
``image_size / orig_size``, which is how boxes are transformed, so they line
up with the pixels exactly; that ratio differs from ``scale`` by less than one
part in ``image_size`` (under one original pixel anywhere in the image).
``original = input / scale`` is therefore accurate to a pixel; for the exact
inverse use ``orig_size / image_size`` per axis.

Mask targets (the TF Model Garden way: cropped in the pipeline so the model
only gathers them): each object's full-resolution mask is cropped to its box
and resampled to S x S with ``tf.image.crop_and_resize`` (bilinear). The crop
covers the box ``[x1, x2] x [y1, y2]`` in continuous pixel coordinates (pixel
``j`` spans ``[j, j + 1]``, its centre is ``j + 0.5``): the S x S grid splits
the box into S equal bins per side and samples each bin's centre, i.e. output
column ``k`` samples ``x = x1 + (k + 0.5) * (x2 - x1) / S``. This matches
RoIAlign with ``aligned=True`` and one sample per bin. Samples within half a
pixel of the image border repeat the edge pixel rather than blending in zeros.
Flipping the crop equals cropping the flipped mask with the flipped box, which
is how flips are applied to masks.

Multi-scale training: with several ``spec.min_sizes`` each training example
draws one uniformly from a stateless RNG keyed on ``(seed, position in the
stream)`` (independent of the flip's draw); evaluation uses
``spec.eval_min_size`` (by default the last value, as torchvision's
``GeneralizedRCNNTransform``: Detectron2's ``(640, 672, ..., 800)`` trains
multi-scale and evaluates at 800). ``max_size`` stays one value, and the spec
checks that its canvases hold every scale.

Determinism and resuming: for a given ``seed`` the stream is identical run
to run. Training reads the split epoch after epoch, each epoch shuffled
(``shuffle_buffer``) by a seed drawn from ``(seed, epoch)`` alone, and numbers
the examples by their *stream index* ``epoch * epoch_size + offset``; each
example's flip (and scale) is drawn from a stateless RNG keyed on ``(seed,
stream index)``, the map is ordered, and orientation windows fill in stream
order. Every batch carries its examples' ``stream_index``. A
:class:`~mrcnn_jax.data.stream.StreamPosition` (``start``) restarts the
stream exactly where a checkpoint left it, partly filled orientation windows
included: reading begins in the epoch that holds the first example still
needed (earlier epochs are not read), and the examples that were already
batched are let through no more (see ``mrcnn_jax/data/stream.py``).
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from mrcnn_jax.data import hide_accelerators_from_tf
from mrcnn_jax.data.stream import StreamPosition
from mrcnn_jax.input_spec import InputSpec

hide_accelerators_from_tf()

OUTPUT_KEYS = ("image", "image_size", "orig_size", "scale", "image_id",
               "gt_boxes", "gt_labels", "gt_valid", "gt_masks", "num_dropped",
               "num_invalid", "num_crowd", "stream_index")


def resized_size(height, width, min_size, max_size: int):
  """(new_h, new_w) int32 and scale float32 of torchvision's resize rule.

  The TF twin of ``mrcnn_jax.input_spec.resized_size``, with the same float64
  arithmetic (a division, a minimum, a product and a floor, each exactly
  rounded), so both give the same sizes. Arguments may be Python ints or
  integer tensors (scalars, or of one shape); ``min_size`` is a tensor when
  drawn per example (multi-scale).
  """
  h = tf.cast(height, tf.float64)
  w = tf.cast(width, tf.float64)
  scale = tf.minimum(tf.cast(min_size, tf.float64) / tf.minimum(h, w),
                     tf.cast(max_size, tf.float64) / tf.maximum(h, w))
  new_h = tf.cast(tf.floor(h * scale), tf.int32)
  new_w = tf.cast(tf.floor(w * scale), tf.int32)
  return tf.maximum(new_h, 1), tf.maximum(new_w, 1), tf.cast(scale, tf.float32)


def _decode_image(image):
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.string:
    # channels=3: grayscale, palette, CMYK and RGBA all come out RGB.
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  if image.dtype != tf.uint8:
    raise ValueError(f"pipeline: example field 'image' must be uint8 "
                     f"[H, W, 3] or encoded bytes, got dtype {image.dtype}")
  image.set_shape([None, None, 3])
  return image


def _gather_masks(masks, keep, height, width):
  """The masks at `keep` of any accepted layout -> uint8 [k, H, W] (0/1).

  Gathering before decoding means PNGs of dropped, crowd and surplus objects
  are never decoded.
  """
  masks = tf.convert_to_tensor(masks)
  masks = tf.gather(masks, keep)
  if masks.dtype == tf.string:
    encoded = masks
    # map_fn cannot stack an empty list of unknown shape: no PNG, no decoding.
    masks = tf.cond(
        tf.size(encoded) > 0,
        lambda: tf.map_fn(
            lambda m: tf.io.decode_png(m, channels=1), encoded,
            fn_output_signature=tf.TensorSpec([None, None, 1], tf.uint8)),
        lambda: tf.zeros([0, height, width, 1], tf.uint8))
  if masks.shape.rank == 4:
    masks = masks[..., 0]
  if masks.shape.rank != 3:
    raise ValueError("pipeline: example field 'objects/mask' must be "
                     "[n, H, W, 1], [n, H, W] or [n] encoded PNGs, got shape "
                     f"{masks.shape}")
  masks = tf.cast(masks > 0, tf.uint8)
  n = tf.shape(masks)[0]
  tf.debugging.assert_equal(
      tf.logical_or(tf.equal(n, 0), tf.reduce_all(
          tf.equal(tf.shape(masks)[1:], tf.stack([height, width])))), True,
      message="pipeline: 'objects/mask' height/width differ from 'image'")
  # An empty sequence can come with unknown or zero spatial dims.
  return tf.reshape(masks, [n, height, width])


def _check_fields(example):
  missing = [k for k in ("image", "image_id", "objects") if k not in example]
  objects = example.get("objects", {})
  missing += [f"objects/{k}" for k in ("bbox", "label", "mask")
              if k not in objects]
  if missing:
    raise ValueError(f"pipeline: example lacks field(s) {missing}; has "
                     f"{sorted(example)} and objects {sorted(objects)}")


def crop_masks_to_boxes(masks, boxes, mask_size: int):
  """Crops masks to their boxes and resamples them to mask_size x mask_size.

  Args:
    masks: uint8 or float [n, H, W], one full-image mask per box.
    boxes: float32 [n, 4] ``xyxy`` in pixels of that mask.
    mask_size: S.

  Returns:
    float32 [n, S, S] in [0, 1]. Bin ``k`` of S samples the continuous
    coordinate ``x1 + (k + 0.5) * (x2 - x1) / S`` (and likewise for y), with
    pixel ``j`` centred at ``j + 0.5``; near the border the edge pixel repeats.
  """
  n = tf.shape(masks)[0]
  height = tf.cast(tf.shape(masks)[1], tf.float32)
  width = tf.cast(tf.shape(masks)[2], tf.float32)
  # One pixel of edge replication, so every sample inside [-0.5, size - 0.5]
  # (pixel-index coordinates) interpolates instead of hitting the zero
  # extrapolation of crop_and_resize.
  # (Concatenating the edges equals tf.pad(mode="SYMMETRIC") by one pixel,
  # whose MirrorPad kernel is ~40x slower: 10 ms for 7 masks of 480 x 640.)
  padded = masks[..., None]
  padded = tf.concat([padded[:, :1], padded, padded[:, -1:]], axis=1)
  padded = tf.concat([padded[:, :, :1], padded, padded[:, :, -1:]], axis=2)
  x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
  half_x = 0.5 * (x2 - x1) / mask_size
  half_y = 0.5 * (y2 - y1) / mask_size
  # First and last sample centres in pixel-index coordinates (centre of
  # pixel j is j), shifted by the padding, then normalised the way
  # crop_and_resize reads boxes: c * (padded_size - 1) = c * (size + 1).
  ys0 = (y1 + half_y - 0.5 + 1.0) / (height + 1.0)
  ys1 = (y2 - half_y - 0.5 + 1.0) / (height + 1.0)
  xs0 = (x1 + half_x - 0.5 + 1.0) / (width + 1.0)
  xs1 = (x2 - half_x - 0.5 + 1.0) / (width + 1.0)
  crops = tf.image.crop_and_resize(
      padded, tf.stack([ys0, xs0, ys1, xs1], axis=-1),
      tf.range(n, dtype=tf.int32), [mask_size, mask_size], method="bilinear")
  return tf.clip_by_value(crops[..., 0], 0.0, 1.0)


def _canvas(spec: InputSpec, new_h, new_w):
  """(Hc, Wc) of ``spec.canvas_for`` for a resized size given as tensors:
  Python ints with one canvas, int32 tensors with orientation buckets."""
  if not spec.bucketed:
    return spec.canvases[0]
  landscape, portrait = (tf.constant(c, tf.int32) for c in spec.canvases)
  canvas_hw = tf.where(new_w >= new_h, landscape, portrait)
  return canvas_hw[0], canvas_hw[1]


def _keypoints(objects, keep, num_keypoints: int):
  """objects/keypoints at `keep` -> float32 [k, K, 3] in original pixels."""
  if "keypoints" not in objects:
    raise ValueError("pipeline: num_keypoints > 0 but the example has no "
                     "'objects/keypoints' (a dataset without keypoints?)")
  kp = tf.cast(objects["keypoints"], tf.float32)
  kp = tf.reshape(tf.gather(tf.reshape(kp, [-1, 3 * num_keypoints]), keep),
                  [-1, num_keypoints, 3])
  return kp


def _resize_flip_keypoints(kp, ratio_x, ratio_y, new_w, flip, flip_map):
  """[k, K, 3] keypoints: per-axis resize, then the flip (x -> new_w - x,
  left/right swapped by `flip_map`); unlabelled ones are all 0."""
  x, y, v = tf.unstack(kp, axis=-1)
  x, y = x * ratio_x, y * ratio_y
  if flip_map is not None:
    fx = tf.gather(new_w - x, flip_map, axis=1)
    fy = tf.gather(y, flip_map, axis=1)
    fv = tf.gather(v, flip_map, axis=1)
    x, y, v = (tf.where(flip, a, b) for a, b in ((fx, x), (fy, y), (fv, v)))
  labelled = v > 0
  return tf.stack([tf.where(labelled, x, 0.0), tf.where(labelled, y, 0.0), v], axis=-1)


def preprocess_example(example: dict[str, Any], *, spec: InputSpec, flip,
                       min_size=None, max_instances: int,
                       gt_mask_size: int, num_keypoints: int = 0,
                       keypoint_flip_map: Sequence[int] | None = None,
                       gt_masks: bool = True) -> dict[str, Any]:
  """One example in the input layout -> one unbatched output dict.

  Works eagerly and inside ``tf.data`` (graph mode). ``flip`` (Python bool or
  scalar bool tensor) mirrors image, boxes and masks horizontally together.
  ``min_size`` is an int or a scalar integer tensor, by default
  ``spec.eval_min_size``. The image is resized, normalised and padded by the
  ``spec``; with orientation buckets ``image`` has a static shape of
  ``[None, None, 3]``. See the module docstring for the input and output
  layouts; boxes are ``xyxy`` in pixels of the resized image. With
  ``num_keypoints`` K > 0, ``gt_keypoints`` too (``keypoint_flip_map``, a
  permutation of range(K), is required then). ``gt_masks`` False: no mask
  targets (no ``gt_masks`` in the output, and no mask is decoded), for an
  evaluation, whose ground truth comes from the dataset's annotations.
  """
  _check_fields(example)
  if num_keypoints and (keypoint_flip_map is None
                        or sorted(keypoint_flip_map) != list(range(num_keypoints))):
    raise ValueError(f"pipeline: keypoint_flip_map must be a permutation of "
                     f"range({num_keypoints}), got {keypoint_flip_map!r}")
  if min_size is None:
    min_size = spec.eval_min_size
  flip = tf.cast(flip, tf.bool)
  image = _decode_image(example["image"])
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  objects = example["objects"]

  # --- Ground truth in original pixels; drop crowd and zero-area boxes. ---
  bbox = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])
  ymin, xmin, ymax, xmax = tf.unstack(bbox, axis=-1)
  boxes = tf.stack([tf.clip_by_value(xmin * wf, 0.0, wf),
                    tf.clip_by_value(ymin * hf, 0.0, hf),
                    tf.clip_by_value(xmax * wf, 0.0, wf),
                    tf.clip_by_value(ymax * hf, 0.0, hf)], axis=-1)
  labels = tf.reshape(tf.cast(objects["label"], tf.int32), [-1]) + 1
  if "area" in objects:
    area = tf.reshape(tf.cast(objects["area"], tf.float32), [-1])
  else:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  num_objects = tf.shape(boxes)[0]
  if "is_crowd" in objects:
    crowd = tf.reshape(tf.cast(objects["is_crowd"], tf.bool), [-1])
  else:
    crowd = tf.zeros([num_objects], tf.bool)
  # NaN coordinates compare False, so they count as invalid too.
  box_ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  valid = box_ok & ~crowd
  valid_idx = tf.cast(tf.reshape(tf.where(valid), [-1]), tf.int32)
  num_valid = tf.shape(valid_idx)[0]
  num_crowd = tf.reduce_sum(tf.cast(crowd, tf.int32))
  num_invalid = num_objects - num_valid - num_crowd

  # --- At most max_instances: keep the largest, in their original order. --
  k = tf.minimum(num_valid, max_instances)
  num_dropped = num_valid - k
  _, top = tf.math.top_k(tf.gather(area, valid_idx), k=k)  # stable on ties
  keep = tf.sort(tf.gather(valid_idx, top))
  boxes = tf.gather(boxes, keep)
  labels = tf.gather(labels, keep)
  if num_keypoints:
    keypoints = _keypoints(objects, keep, num_keypoints)

  # --- Mask targets from the full-resolution masks, before the resize. ----
  if gt_masks:
    masks = _gather_masks(objects["mask"], keep, height, width)
    mask_targets = crop_masks_to_boxes(masks, boxes, gt_mask_size)
    mask_targets = tf.where(flip, tf.reverse(mask_targets, axis=[2]), mask_targets)

  # --- Resize the image; boxes follow the per-axis size ratio. ------------
  new_h, new_w, scale = resized_size(height, width, min_size, spec.max_size)
  canvas_h, canvas_w = _canvas(spec, new_h, new_w)
  # The spec checked that its canvases hold every size of its min/max sizes;
  # this guards a min_size given here beyond them.
  tf.debugging.assert_less_equal(
      tf.stack([new_h, new_w]), tf.stack([canvas_h, canvas_w]),
      message=(f"pipeline: resized image does not fit the canvas of "
               f"{spec.describe_canvases()} (a min_size beyond the spec's?)"))
  image = tf.cast(image, tf.float32) * (1.0 / 255.0)
  image = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear",
                          antialias=False)
  new_hf, new_wf = tf.cast(new_h, tf.float32), tf.cast(new_w, tf.float32)
  boxes = boxes * tf.stack([new_wf / wf, new_hf / hf, new_wf / wf, new_hf / hf])
  image = tf.where(flip, tf.reverse(image, axis=[1]), image)
  boxes = tf.where(
      flip,
      tf.stack([new_wf - boxes[:, 2], boxes[:, 1],
                new_wf - boxes[:, 0], boxes[:, 3]], axis=-1),
      boxes)

  # --- Normalise, pad to the canvas and to max_instances. -----------------
  image = ((image - tf.constant(spec.mean, tf.float32))
           / tf.constant(spec.std, tf.float32))
  image = tf.pad(image, [[0, canvas_h - new_h], [0, canvas_w - new_w], [0, 0]])
  if spec.bucketed:
    image.set_shape([None, None, 3])
  else:
    image = tf.ensure_shape(image, [canvas_h, canvas_w, 3])
  pad_n = max_instances - k
  out = {
      "image": image,
      "image_size": tf.stack([new_h, new_w]),
      "orig_size": tf.stack([height, width]),
      "scale": scale,
      "image_id": tf.cast(example["image_id"], tf.int32),
      "gt_boxes": tf.pad(boxes, [[0, pad_n], [0, 0]]),
      "gt_labels": tf.pad(labels, [[0, pad_n]]),
      "gt_valid": tf.range(max_instances) < k,
      "num_dropped": num_dropped,
      "num_invalid": num_invalid,
      "num_crowd": num_crowd,
  }
  if gt_masks:
    out["gt_masks"] = tf.ensure_shape(
        tf.pad(mask_targets, [[0, pad_n], [0, 0], [0, 0]]),
        [max_instances, gt_mask_size, gt_mask_size])
  if num_keypoints:
    keypoints = _resize_flip_keypoints(
        keypoints, new_wf / wf, new_hf / hf, new_wf, flip,
        tf.constant(keypoint_flip_map, tf.int32))
    out["gt_keypoints"] = tf.ensure_shape(
        tf.pad(keypoints, [[0, pad_n], [0, 0], [0, 0]]),
        [max_instances, num_keypoints, 3])
  out["gt_boxes"] = tf.ensure_shape(out["gt_boxes"], [max_instances, 4])
  out["gt_labels"] = tf.ensure_shape(out["gt_labels"], [max_instances])
  return out


def _padding_examples(count, canvas_hw, max_instances, gt_mask_size,
                      num_keypoints=0):
  """`count` blank examples (image_id -1) of canvas (H, W) (ints or a tensor)
  that fill a final partial batch; leading axis `count`."""
  canvas_hw = tf.cast(tf.stack([canvas_hw[0], canvas_hw[1]]), tf.int32)
  zeros = lambda shape, dtype: tf.zeros(tf.concat(
      [[count], tf.cast(tf.reshape(shape, [-1]), tf.int32)], 0), dtype)
  out = {} if not num_keypoints else {
      "gt_keypoints": zeros([max_instances, num_keypoints, 3], tf.float32)}
  return dict(out, **{
      "image": zeros(tf.concat([canvas_hw, [3]], 0), tf.float32),
      "image_size": tf.tile(canvas_hw[None], [count, 1]),
      "orig_size": tf.tile(canvas_hw[None], [count, 1]),
      "scale": tf.ones([count], tf.float32),
      "image_id": tf.fill([count], -1),
      "gt_boxes": zeros([max_instances, 4], tf.float32),
      "gt_labels": zeros([max_instances], tf.int32),
      "gt_valid": zeros([max_instances], tf.bool),
      "gt_masks": zeros([max_instances, gt_mask_size, gt_mask_size],
                        tf.float32),
      "num_dropped": zeros([], tf.int32),
      "num_invalid": zeros([], tf.int32),
      "num_crowd": zeros([], tf.int32),
      "stream_index": tf.fill([count], tf.constant(-1, tf.int64)),
  })


def epoch_seed(seed: int, epoch):
  """The shuffle seed of ``epoch`` (int or int64 tensor): a stateless draw
  keyed on ``(seed, epoch)``, so an epoch's order never depends on how the
  epochs before it were read."""
  key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
  return tf.random.stateless_uniform([], seed=key, minval=0, maxval=2**62,
                                     dtype=tf.int64)


def shard_seed(seed: int, index: int) -> int:
  """The seed of shard ``index`` of several (shuffle, flips, scales): each
  process's share of the input is shuffled and flipped by its own draws
  (one shard, i.e. one process, keeps ``seed`` itself)."""
  return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def shard_size(num_examples: int, index: int, count: int) -> int:
  """Examples of ``num_examples`` in ``ds.shard(count, index)``: those at
  positions ``index, index + count, ...``."""
  return max(0, (int(num_examples) - int(index) + int(count) - 1) // int(count))


def count_examples(ds: tf.data.Dataset) -> int:
  """Examples in one pass of ``ds``: its cardinality when tf.data knows it,
  else counted by reading it once."""
  n = int(ds.cardinality())
  if n == tf.data.INFINITE_CARDINALITY:
    raise ValueError("make_pipeline: the input dataset is infinite; give it "
                     "one epoch (the pipeline repeats it)")
  if n < 0:
    n = int(ds.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
  if n < 1:
    raise ValueError("make_pipeline: the input dataset is empty")
  return n


def _indexed_stream(ds: tf.data.Dataset, *, shuffle_buffer: int, seed: int,
                    repeat: bool, epoch_size: int | None,
                    start: StreamPosition) -> tf.data.Dataset:
  """(stream index int64, example) from ``start`` on: epoch after epoch
  when ``repeat``, each shuffled by :func:`epoch_seed` when
  ``shuffle_buffer > 1`` (module docstring, "Determinism and resuming")."""
  if repeat:
    if epoch_size is None:
      epoch_size = count_examples(ds)
    ds = ds.apply(tf.data.experimental.assert_cardinality(epoch_size))
  else:
    epoch_size = 1 << 62  # one epoch: the stream index is the offset
  first_epoch, first_offset = divmod(start.first_to_read, epoch_size)

  def one_epoch(epoch):
    d = ds
    if shuffle_buffer > 1:
      d = d.shuffle(shuffle_buffer, seed=epoch_seed(seed, epoch),
                    reshuffle_each_iteration=False)
    d = d.enumerate().map(lambda i, ex: (epoch * epoch_size + i, ex))
    # Only the first epoch read starts inside: the skipped examples are read
    # (as stored, before any decoding) but not processed.
    return d.skip(tf.where(epoch == first_epoch, tf.constant(first_offset, tf.int64),
                           tf.constant(0, tf.int64)))

  last_epoch = (1 << 62) // epoch_size if repeat else 1
  stream = tf.data.Dataset.range(first_epoch, last_epoch).flat_map(one_epoch)
  if start.pending:
    # Examples between the first pending one and `next` that were already
    # batched do not come again.
    pending = tf.constant(start.pending, tf.int64)
    stream = stream.filter(lambda i, _: (i >= start.next) | tf.reduce_any(
        tf.equal(i, pending)))
  return stream


def make_pipeline(ds: tf.data.Dataset, *, spec: InputSpec, train: bool,
                  batch_dims: Sequence[int], max_instances: int,
                  gt_mask_size: int, flip_prob: float = 0.5, seed: int = 0,
                  shuffle_buffer: int = 512, repeat: bool | None = None,
                  start: StreamPosition | None = None,
                  epoch_size: int | None = None,
                  drop_remainder: bool = True, prefetch: int = 2,
                  cache: bool = False,
                  num_parallel_calls: int | None = None,
                  num_keypoints: int = 0,
                  keypoint_flip_map: Sequence[int] | None = None,
                  shard: tuple[int, int] = (0, 1), gt_masks: bool = True
                  ) -> tf.data.Dataset:
  """Examples -> batches of static shape with leading dims `batch_dims`.

  Args:
    ds: examples in the input layout (module docstring), e.g. from
      ``shapes.load_shapes(split, data_dir, decode=False)`` or
      ``coco.load_coco(builder, split, decode=False)``.
    spec: the input rules (``InputSpec.from_config(config.data)``): short
      side(s) and ``max_size`` of the resize, the canvas or orientation
      buckets, mean/std (module docstring).
    train: shuffle (``shuffle_buffer``, seeded per epoch), flip
      (``flip_prob``) and draw the short side from ``spec.min_sizes`` per
      example; otherwise none of these and the short side is
      ``spec.eval_min_size``.
    batch_dims: leading dims of every output, e.g. ``(devices, per_device)``;
      their product is the number of examples per batch.
    max_instances: N, ground truth per image after padding / dropping.
    gt_mask_size: S of the cropped mask targets.
    flip_prob: probability of a horizontal flip (training only).
    seed: seeds the shuffle, the flips and the scales.
    shuffle_buffer: examples in the shuffle buffer (training only).
    repeat: read epoch after epoch forever; defaults to `train`.
    start: where to start the stream (default: its beginning), e.g. the
      position a checkpoint saved, to resume training exactly.
    epoch_size: examples in one pass of `ds` (with `repeat`); by default
      its cardinality, or counted by reading it once. A pass of another
      size is an error.
    drop_remainder: drop a final partial batch; if False it is filled with
      blank examples whose ``image_id`` is -1 (so every batch has the same
      shape) -- skip those when evaluating. With orientation buckets each
      bucket's final partial batch is filled the same way.
    prefetch: batches to prefetch (0 for none).
    cache: cache the input examples in memory after the first pass.
    num_parallel_calls: parallelism of the per-example map (AUTOTUNE).
    num_keypoints: K > 0 adds ``gt_keypoints`` (``objects/keypoints`` of
      the input); ``keypoint_flip_map`` is then the left/right permutation.
    shard: (index, count): read only every count-th stored example from
      the index-th on (one process's share of the input, before the
      shuffle; see :func:`shard_seed`). `epoch_size` stays the whole
      split's; stream indices and `start` then count this shard's stream.
    gt_masks: False leaves the mask targets out (no ``gt_masks``; no mask
      is decoded): an evaluation needs none.

  Returns:
    A ``tf.data.Dataset`` of batch dicts (module docstring), deterministic
    for a given `seed`.
  """
  batch_dims = tuple(int(d) for d in batch_dims)
  if not batch_dims or any(d < 1 for d in batch_dims):
    raise ValueError(f"make_pipeline: batch_dims must be positive ints, got "
                     f"{batch_dims}")
  if not isinstance(spec, InputSpec):
    raise TypeError(f"make_pipeline: spec must be an InputSpec (InputSpec."
                    f"from_config(config.data)), got {type(spec).__name__}")
  if max_instances < 1 or gt_mask_size < 1:
    raise ValueError("make_pipeline: max_instances and gt_mask_size must be "
                     f">= 1, got {max_instances}, {gt_mask_size}")
  if not 0.0 <= flip_prob <= 1.0:
    raise ValueError(f"make_pipeline: flip_prob must be in [0, 1], got "
                     f"{flip_prob}")
  if repeat is None:
    repeat = train
  start = start or StreamPosition()
  if start != StreamPosition() and not repeat:
    raise ValueError("make_pipeline: a start position needs a repeated "
                     "(training) stream")
  batch_size = int(np.prod(batch_dims))
  parallel = tf.data.AUTOTUNE if num_parallel_calls is None else (
      num_parallel_calls)

  index, count = (int(x) for x in shard)
  if not 0 <= index < count:
    raise ValueError(f"make_pipeline: shard {shard} is not (index, count) with "
                     "0 <= index < count")
  if count > 1:
    ds = ds.shard(count, index)
    seed = shard_seed(seed, index)
    if epoch_size is not None:
      epoch_size = shard_size(epoch_size, index, count)
  if cache:
    ds = ds.cache()
  ds = _indexed_stream(ds, shuffle_buffer=shuffle_buffer if train else 0,
                      seed=seed, repeat=repeat, epoch_size=epoch_size,
                      start=start)
  min_sizes = spec.min_sizes
  multi_scale = train and len(min_sizes) > 1

  def transform(index, example):
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
    if train and flip_prob > 0.0:
      flip = tf.random.stateless_uniform([], seed=key) < flip_prob
    else:
      flip = False
    if multi_scale:
      # A key of its own, so the flips stay what they were without it.
      scale_key = tf.random.experimental.stateless_fold_in(key, 1)
      choice = tf.random.stateless_uniform(
          [], seed=scale_key, minval=0, maxval=len(min_sizes), dtype=tf.int32)
      size = tf.gather(tf.constant(min_sizes, tf.int32), choice)
    else:
      size = min_sizes[-1] if train else spec.eval_min_size
    out = preprocess_example(
        example, spec=spec, flip=flip, min_size=size,
        max_instances=max_instances, gt_mask_size=gt_mask_size,
        num_keypoints=num_keypoints, keypoint_flip_map=keypoint_flip_map,
        gt_masks=gt_masks)
    return dict(out, stream_index=index)

  ds = ds.map(transform, num_parallel_calls=parallel, deterministic=True)
  if not spec.bucketed:
    ds = ds.batch(batch_size, drop_remainder=drop_remainder,
                  num_parallel_calls=parallel, deterministic=True)
  else:
    portrait = tf.constant(spec.canvases[1], tf.int32)

    def bucket(example):  # 0 landscape, 1 portrait (the canvases differ)
      hw = tf.shape(example["image"])[:2]
      return tf.cast(tf.reduce_all(tf.equal(hw, portrait)), tf.int64)

    ds = ds.group_by_window(
        key_func=bucket,
        reduce_func=lambda _, window: window.batch(
            batch_size, drop_remainder=drop_remainder),
        window_size=batch_size)

  if not drop_remainder:
    def fill(batch):
      missing = batch_size - tf.shape(batch["image_id"])[0]
      filler = _padding_examples(missing, tf.shape(batch["image"])[1:3],
                                 max_instances, gt_mask_size, num_keypoints)
      out = {}
      for key, value in batch.items():
        out[key] = tf.concat([value, filler[key]], axis=0)
        out[key].set_shape([batch_size] + value.shape[1:].as_list())
      return out

    ds = ds.map(fill)

  def reshape(batch):
    out = {}
    for key, value in batch.items():
      tail = value.shape[1:]
      if tail.is_fully_defined():
        out[key] = tf.reshape(value, batch_dims + tuple(tail))
      else:
        out[key] = tf.reshape(value, tf.concat(
            [tf.constant(batch_dims, tf.int32), tf.shape(value)[1:]], 0))
        out[key].set_shape(batch_dims + tuple(tail))
    return out

  ds = ds.map(reshape)
  if prefetch:
    ds = ds.prefetch(prefetch)
  # Options on the final dataset: those of `ds` above do not reach the
  # root through the per-epoch flat_map of _indexed_stream.
  options = tf.data.Options()
  options.deterministic = True
  # No autotuning: its optimisation thread belongs to the iterator, whose
  # teardown joins it. At the end of a main job py-spy's native stacks had
  # the training and then the evaluation input waiting there (in
  # RootDataset::Iterator's destructor) for 5-16 s, and the waits of about
  # 55 s in three of nine earlier runs were in the same Python call. Without
  # it tf.data runs an AUTOTUNE map or batch with one call per core (at
  # most 16), and the prefetch buffer stays `prefetch` batches.
  options.autotune.enabled = False
  ds = ds.with_options(options)
  return ds


def numpy_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates a pipeline's batches as dicts of numpy arrays."""
  yield from ds.as_numpy_iterator()


def measure_throughput(iterator: Iterable[dict[str, Any]], num_batches: int,
                       warmup_batches: int = 1) -> float:
  """Images per second pulled from `iterator` over `num_batches` batches.

  The first `warmup_batches` (graph building, buffer filling) are not timed.
  Images per batch are read from ``batch["image"]`` (all leading dims).
  """
  iterator = iter(iterator)
  for _ in range(warmup_batches):
    next(iterator)
  images = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(iterator)
    images += int(np.prod(np.shape(batch["image"])[:-3]))
  elapsed = time.perf_counter() - start
  return images / elapsed
