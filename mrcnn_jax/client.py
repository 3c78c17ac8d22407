"""The numpy side of the model's input/output contract, standalone (imports
numpy and json only) so that ``mrcnn-jax export`` ships this very file as
``client.py`` next to every artifact:

* ``resized_size`` / ``resize_bilinear``: torchvision's resize rule and
  PyTorch's bilinear resize (``mrcnn_jax.input_spec`` and
  ``mrcnn_jax.preprocess`` use these, so predict, evaluation and exported
  models resize images the same way);
* ``paste_masks``: torchvision's ``paste_masks_in_image`` on the host;
* ``to_original``: one image's detections mapped back to its own pixels;
* ``prepare``, ``load_export_info``: an export's input from any images.

Client of an export (no JAX, no mrcnn_jax)::

    import client                                  # OUT/client.py
    info = client.load_export_info("OUT")
    images, sizes, originals = client.prepare([rgb_uint8], info)
    out = run_the_artifact(images, sizes)          # StableHLO / SavedModel
    dets = client.to_original({k: v[0] for k, v in out.items()}, sizes[0],
                              originals[0])        # boxes, scores, labels, masks
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

import numpy as np


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
  """(new_h, new_w) of torchvision's resize rule: scale = min(min_size /
  min(H, W), max_size / max(H, W)) and floor((H, W) * scale), in double
  precision as torchvision 0.28 computes it eagerly; at least 1 pixel."""
  scale = min(float(min_size) / min(height, width), float(max_size) / max(height, width))
  return (max(int(math.floor(height * scale)), 1),
          max(int(math.floor(width * scale)), 1))


def _axis_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of PyTorch's bilinear resize along one axis:
  source = (dst + 0.5) * in / out - 0.5, clamped at 0."""
  scale = np.float32(n_in / n_out)
  src = np.maximum((np.arange(n_out, dtype=np.float32) + 0.5) * scale - 0.5, 0.0)
  i0 = np.floor(src).astype(np.int64)
  i0 = np.minimum(i0, n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  frac = src - i0
  m = np.zeros((n_out, n_in), np.float32)
  np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), i1), frac)
  return m


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[H, W, C] -> [h, w, C] float32, PyTorch bilinear (align_corners=False,
  no antialiasing)."""
  image = np.asarray(image, np.float32)
  my = _axis_matrix(image.shape[0], size[0])
  mx = _axis_matrix(image.shape[1], size[1])
  return np.einsum("yh,hwc,xw->yxc", my, image, mx, optimize=True)


def _paste_axis(start: int, end: int, out_len: int, src_len: int) -> np.ndarray:
  """[out_len, src_len] bilinear weights placing a source of src_len pixels
  over pixels start..end (inclusive) of an axis of out_len; zero outside."""
  size = np.float32(max(end - start + 1, 1))
  pos = np.arange(out_len, dtype=np.float32)
  inside = (pos >= max(start, 0)) & (pos < min(end + 1, out_len))
  src = np.maximum((pos - start + 0.5) * (np.float32(src_len) / size) - 0.5, 0.0)
  i0 = np.floor(src)
  frac = (src - i0).astype(np.float32)
  i0 = np.minimum(i0.astype(np.int64), src_len - 1)
  i1 = np.minimum(i0 + 1, src_len - 1)
  w = np.zeros((out_len, src_len), np.float32)
  np.add.at(w, (np.arange(out_len), i0), 1.0 - frac)
  np.add.at(w, (np.arange(out_len), i1), frac)
  return w * inside[:, None]


def paste_masks(masks, boxes, image_size: tuple[int, int], padding: int = 1,
                threshold: float | None = 0.5) -> np.ndarray:
  """torchvision's ``paste_masks_in_image``: each M x M mask (box
  coordinates) padded by one pixel, its box grown by (M + 2) / M and
  truncated to integers, resized bilinearly into the box. Returns bool
  [N, H, W] with ``threshold``, else float32 probabilities."""
  masks = np.asarray(masks, np.float32)
  if masks.ndim == 4:
    masks = masks[:, 0]
  h_img, w_img = int(image_size[0]), int(image_size[1])
  out = np.zeros((len(masks), h_img, w_img), np.float32)
  if len(masks):
    m = masks.shape[-1]
    src = m + 2 * padding
    padded = np.pad(masks, ((0, 0), (padding, padding), (padding, padding)))
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    half = (boxes[:, 2:] - boxes[:, :2]) * np.float32(0.5 * src / m)
    centre = (boxes[:, 2:] + boxes[:, :2]) * np.float32(0.5)
    grown = np.trunc(np.concatenate([centre - half, centre + half], axis=1)).astype(np.int64)
    for i, (x0, y0, x1, y1) in enumerate(grown):
      out[i] = _paste_axis(y0, y1, h_img, src) @ padded[i] @ _paste_axis(x0, x1, w_img, src).T
  return out > threshold if threshold is not None else out


def to_original(det: Mapping[str, np.ndarray], image_size, orig_size,
                mask_threshold: float | None = 0.5) -> dict:
  """One image's valid detections in its original pixels: boxes (and
  keypoints [N, K, 3], with ``keypoint_scores``) scaled by the exact
  per-axis ratio orig_size / image_size, masks [N, H, W] pasted (bool with
  ``mask_threshold``, else probabilities)."""
  v = np.asarray(det["valid"], bool)
  ry = orig_size[0] / image_size[0]
  rx = orig_size[1] / image_size[1]
  boxes = np.asarray(det["boxes"], np.float32)[v] * np.array([rx, ry, rx, ry], np.float32)
  out = {"boxes": boxes, "scores": np.asarray(det["scores"])[v],
         "labels": np.asarray(det["labels"])[v]}
  if "keypoints" in det:
    kp = np.asarray(det["keypoints"], np.float32)[v]
    out["keypoints"] = kp * np.array([rx, ry, 1.0], np.float32)
    out["keypoint_scores"] = np.asarray(det["keypoint_scores"])[v]
  if "masks" in det:
    out["masks"] = paste_masks(np.asarray(det["masks"])[v], boxes,
                               tuple(int(x) for x in orig_size), threshold=mask_threshold)
  return out


def load_export_info(export_dir: str) -> dict:
  with open(os.path.join(export_dir, "export.json")) as f:
    return json.load(f)


def prepare(images: Sequence[np.ndarray], info: Mapping) -> tuple:
  """RGB uint8 images ([H, W, 3]; grayscale [H, W] is expanded) -> an
  export's input: (images uint8 [B, Hc, Wc, 3], image_sizes int32 [B, 2],
  original sizes [(H, W), ...]). Fewer images than the export's batch are
  padded with blank ones (ignore their outputs)."""
  batch, (ch, cw) = int(info["batch"]), info["canvas"]
  spec = info["input"]
  if len(images) > batch:
    raise ValueError(f"{len(images)} images for an export of batch {batch}")
  out = np.zeros((batch, ch, cw, 3), np.uint8)
  sizes = np.tile(np.asarray([[ch, cw]], np.int32), (batch, 1))
  originals = []
  for i, image in enumerate(images):
    image = np.asarray(image)
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    h, w = image.shape[:2]
    nh, nw = resized_size(h, w, spec["min_size"], spec["max_size"])
    if nh > ch or nw > cw:
      raise ValueError(f"image {i} ({h}x{w}) resizes to {nh}x{nw}, larger than the export's "
                       f"canvas {ch}x{cw} (export with a canvas of the other orientation)")
    resized = resize_bilinear(image[..., :3], (nh, nw)) if (nh, nw) != (h, w) else image[..., :3]
    out[i, :nh, :nw] = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    sizes[i] = (nh, nw)
    originals.append((h, w))
  return out, sizes, originals
