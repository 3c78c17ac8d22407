"""Numpy image preprocessing for inference outside tf.data (notebooks,
``mrcnn-jax predict``, export, benchmarks): torchvision's
``GeneralizedRCNNTransform`` without TensorFlow.

The rules (resized size, canvas, mean/std) are an
:class:`~mrcnn_jax.input_spec.InputSpec`'s, the same the tf.data pipeline
follows::

  spec = InputSpec.from_config(config.data)
  x, size = prepare_image(rgb, spec)        # short side spec.eval_min_size
  batch, sizes = pad_to_spec_canvas([x], spec)
  batch, sizes = prepare_batch([rgb], spec)  # the same in one call

Resize is bilinear with ``align_corners=False`` and no antialiasing, PyTorch's
``F.interpolate`` rule (source = (dst + 0.5) * in / out - 0.5, clamped at 0),
so a torchvision-trained checkpoint sees the pixels it was trained on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mrcnn_jax.client import resize_bilinear  # noqa: F401  (shared with exports)
from mrcnn_jax.input_spec import SIZE_DIVISIBILITY, InputSpec


def prepare_image(image: np.ndarray, spec: InputSpec, *, min_size: int | None = None
                  ) -> tuple[np.ndarray, tuple[int, int]]:
  """uint8 (or [0, 1] float) RGB [H, W, 3] -> (resized image normalised with
  the spec's mean/std, float32 [h, w, 3]; its size (h, w)).

  (h, w) is ``spec.resized_size(H, W, min_size)``: the short side is
  ``min_size``, by default ``spec.eval_min_size``. Grayscale [H, W] or
  [H, W, 1] is expanded to RGB, RGBA drops alpha.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an [H, W, 3] RGB image, got shape {image.shape}")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  image = image[..., :3]
  x = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
  size = spec.resized_size(*x.shape[:2], min_size=min_size)
  if size != x.shape[:2]:
    x = resize_bilinear(x, size)
  x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
  return x, size


def pad_to_spec_canvas(images: Sequence[np.ndarray], spec: InputSpec):
  """Prepared images (:func:`prepare_image`) -> one batch on their canvas,
  ``spec.canvas_for`` their size (all must share it: with orientation buckets
  batch landscape and portrait images apart).

  Returns (batch [B, Hc, Wc, 3] float32, image_sizes [B, 2] int32).
  """
  if not len(images):
    raise ValueError("pad_to_spec_canvas: no images")
  canvases = {spec.canvas_for(*im.shape[:2]) for im in images}
  if len(canvases) > 1:
    raise ValueError(f"pad_to_spec_canvas: the images go to different canvases "
                     f"{sorted(canvases)} (landscape and portrait); batch them apart")
  return pad_to_canvas(images, canvas=canvases.pop(), size_divisibility=spec.size_divisibility)


def prepare_batch(images: Sequence[np.ndarray], spec: InputSpec, *,
                  min_size: int | None = None):
  """RGB images -> (batch [B, Hc, Wc, 3] float32, image_sizes [B, 2] int32):
  :func:`prepare_image` each, then :func:`pad_to_spec_canvas` (so all must
  go to one canvas)."""
  return pad_to_spec_canvas([prepare_image(im, spec, min_size=min_size)[0] for im in images],
                            spec)


def pad_to_canvas(images: Sequence[np.ndarray], canvas: tuple[int, int] | None = None,
                  size_divisibility: int = SIZE_DIVISIBILITY):
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
