"""Numpy image preprocessing for inference outside tf.data (notebooks,
``mrcnn-jax predict``, benchmarks): torchvision's ``GeneralizedRCNNTransform``
without TensorFlow.

Resize is bilinear with ``align_corners=False`` and no antialiasing, PyTorch's
``F.interpolate`` rule (source = (dst + 0.5) * in / out - 0.5, clamped at 0),
so a torchvision-trained checkpoint sees the pixels it was trained on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_scale(h: int, w: int, min_size: int, max_size: int) -> float:
  """torchvision's scale: short side to min_size unless the long side would
  exceed max_size."""
  return min(min_size / min(h, w), max_size / max(h, w))


def _axis_matrix(n_in: int, n_out: int) -> np.ndarray:
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
  """[H, W, C] float -> [h, w, C] float32, PyTorch bilinear (no antialias)."""
  image = np.asarray(image, np.float32)
  my = _axis_matrix(image.shape[0], size[0])
  mx = _axis_matrix(image.shape[1], size[1])
  return np.einsum("yh,hwc,xw->yxc", my, image, mx, optimize=True)


def prepare_image(image: np.ndarray, *, min_size: int = 800, max_size: int = 1333,
                  mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
  """uint8 (or [0, 1] float) RGB [H, W, 3] -> (normalised resized float32
  image [h, w, 3], scale). Grayscale [H, W] or [H, W, 1] is expanded to RGB,
  RGBA drops alpha."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an [H, W, 3] RGB image, got shape {image.shape}")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  image = image[..., :3]
  x = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
  h, w = x.shape[:2]
  scale = resize_scale(h, w, min_size, max_size)
  # torchvision: size = floor(in * scale) (recompute_scale_factor=True)
  nh, nw = int(np.floor(h * scale)), int(np.floor(w * scale))
  if (nh, nw) != (h, w):
    x = resize_bilinear(x, (nh, nw))
  x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return x, float(nh / h)


def pad_to_canvas(images: Sequence[np.ndarray], canvas: tuple[int, int] | None = None,
                  size_divisibility: int = 32):
  """Zero-pads images (bottom/right) onto one canvas.

  Returns (batch [B, H, W, 3] float32, image_sizes [B, 2] int32). Without an
  explicit canvas it is the smallest multiple of ``size_divisibility`` that
  holds every image, as torchvision batches.
  """
  sizes = np.asarray([im.shape[:2] for im in images], np.int32)
  if canvas is None:
    canvas = tuple(int(-(-int(m) // size_divisibility) * size_divisibility)
                   for m in sizes.max(axis=0))
  if (sizes[:, 0] > canvas[0]).any() or (sizes[:, 1] > canvas[1]).any():
    raise ValueError(f"image sizes {sizes.tolist()} do not fit the canvas {canvas}")
  batch = np.zeros((len(images),) + tuple(canvas) + (3,), np.float32)
  for i, im in enumerate(images):
    batch[i, :im.shape[0], :im.shape[1]] = im
  return batch, sizes
