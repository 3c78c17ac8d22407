"""Drawing of the synthetic datasets and their parallel generation: numpy
and PIL only, no TensorFlow.

The TFDS builders of the shapes and figures datasets (``shapes.py``,
``figures.py``) draw and PNG-encode their examples on every core through
:func:`generate`. Every example is drawn from its own generator
(:func:`example_rng`), so the examples, and their bytes, do not depend on
how many threads drew them.
"""

from __future__ import annotations

import collections
import colorsys
import concurrent.futures
import dataclasses
import functools
import io
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image as PILImage

from mrcnn_jax import runtime

# Classes of the shapes dataset, in label order (0-based in the dataset).
CLASS_NAMES = ("square", "circle", "triangle")

_SPLIT_CODES = {"train": 0, "validation": 1}

# Splits smaller than this are drawn in the caller's thread: a pool costs
# more than it saves there (tests prepare datasets of a few examples).
PARALLEL_MIN_EXAMPLES = 256


def png_bytes(array: np.ndarray) -> bytes:
  """PNG encoding of a uint8 [H, W] or [H, W, C] array. compress_level 1:
  noisy images and 0/1 masks barely compress more, and it is ~5x faster."""
  buf = io.BytesIO()
  PILImage.fromarray(array).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def generate(make: Callable[[int], Any], num: int, *, threads: int | None = None,
             min_parallel: int = PARALLEL_MIN_EXAMPLES) -> Iterator[Any]:
  """``make(0), make(1), ..., make(num - 1)`` in order, computed by one
  thread per usable core (``threads``) when ``num`` is at least
  ``min_parallel``; in the caller's thread otherwise.

  Threads, not processes: PIL's PNG encoder and numpy's array operations
  release the GIL, so drawing and encoding overlap on the cores, and nothing
  has to be pickled or imported again; worker processes would have to be
  spawned (the caller may hold JAX's and TensorFlow's threads, which a fork
  does not survive safely), and a spawned worker imports the caller's main
  module again, which a script without an ``if __name__ == "__main__"``
  guard does not survive. ``make`` must be deterministic in its index.
  """
  if threads is None:
    threads = runtime.usable_cores()
  if threads < 2 or num < min_parallel:
    yield from map(make, range(num))
    return
  with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="draw") as pool:
    # In order, with a bounded lookahead (not every example held at once).
    pending: collections.deque = collections.deque()
    for index in range(num):
      pending.append(pool.submit(make, index))
      if len(pending) >= 4 * threads:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


@dataclasses.dataclass(frozen=True)
class DrawParams:
  """What one generated example looks like (all sizes in pixels)."""

  min_image_size: int = 128
  max_image_size: int = 256
  max_objects: int = 6
  min_object_size: int = 16
  max_object_size: int = 96
  min_visible_area: int = 30
  stripes_prob: float = 0.3


def _shape_inside(label: int, size: int, cy: float, cx: float,
                  ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  """Which pixel centres (ys [h, 1], xs [1, w]) lie inside the shape."""
  half = size / 2.0
  if label == 0:  # square, axis-aligned, side `size`
    return (np.abs(ys - cy) <= half) & (np.abs(xs - cx) <= half)
  if label == 1:  # circle, diameter `size`
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= half * half
  # triangle: upright isosceles, apex at the top, base and height `size`
  top = cy - half
  return (ys >= top) & (ys <= cy + half) & (np.abs(xs - cx) <= (ys - top) / 2.0)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
  h, s, v = rng.uniform(0.0, 1.0), rng.uniform(0.5, 1.0), rng.uniform(0.45, 1.0)
  return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255.0


def _background(rng: np.random.Generator, h: int, w: int,
                params: DrawParams) -> np.ndarray:
  """Random linear colour gradient, sometimes with stripes; float32 [h, w, 3]."""
  c0 = rng.uniform(20.0, 235.0, size=3).astype(np.float32)
  c1 = np.clip(c0 + rng.uniform(-70.0, 70.0, size=3), 0, 255).astype(np.float32)
  theta = rng.uniform(0.0, 2 * np.pi)
  ys = np.arange(h, dtype=np.float32)[:, None] / max(h - 1, 1)
  xs = np.arange(w, dtype=np.float32)[None, :] / max(w - 1, 1)
  t = xs * np.cos(theta) + ys * np.sin(theta)
  t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
  image = c0 + t[..., None] * (c1 - c0)
  if rng.uniform() < params.stripes_prob:
    period = rng.uniform(6.0, 24.0)
    phi = rng.uniform(0.0, np.pi)
    amplitude = rng.uniform(8.0, 30.0)
    phase = (np.arange(w, dtype=np.float32)[None, :] * np.cos(phi)
             + np.arange(h, dtype=np.float32)[:, None] * np.sin(phi))
    stripes = np.sign(np.sin(2 * np.pi * phase / period)).astype(np.float32)
    image = image + amplitude * stripes[..., None]
  return image


def draw_example(rng: np.random.Generator,
                 params: DrawParams = DrawParams()) -> dict[str, Any]:
  """Draws one example.

  Returns a dict with ``image`` uint8 [H, W, 3], ``masks`` bool [n, H, W]
  (visible parts, disjoint, each with at least ``min_visible_area`` pixels),
  ``labels`` int64 [n] (0-based into CLASS_NAMES) and ``num_occluded`` (objects
  drawn but dropped for too small a visible area). ``n >= 1``: if occlusion
  leaves no object, the example is drawn again from the same generator.
  """
  while True:
    h, w = (int(v) for v in rng.integers(
        params.min_image_size, params.max_image_size + 1, size=2))
    image = _background(rng, h, w, params)
    bg_mean = image.reshape(-1, 3).mean(axis=0)
    owner = np.zeros((h, w), np.int16)  # 1 + index of the visible object
    num_objects = int(rng.integers(1, params.max_objects + 1))
    labels = []
    for i in range(num_objects):
      label = int(rng.integers(0, len(CLASS_NAMES)))
      size = int(rng.integers(params.min_object_size,
                              min(params.max_object_size, h, w) + 1))
      half = size / 2.0
      cy = rng.uniform(half, h - half)
      cx = rng.uniform(half, w - half)
      colour = _random_colour(rng)
      for _ in range(8):  # keep the object visible against the background
        if np.abs(colour - bg_mean).mean() > 40.0:
          break
        colour = _random_colour(rng)
      y0, y1 = max(int(np.floor(cy - half)), 0), min(int(np.ceil(cy + half)), h)
      x0, x1 = max(int(np.floor(cx - half)), 0), min(int(np.ceil(cx + half)), w)
      ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
      xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
      inside = _shape_inside(label, size, cy, cx, ys, xs)
      image[y0:y1, x0:x1][inside] = colour
      owner[y0:y1, x0:x1][inside] = i + 1
      labels.append(label)

    noise_std = rng.uniform(2.0, 10.0)
    image = image + noise_std * rng.standard_normal((h, w, 3), dtype=np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    masks, kept_labels, num_occluded = [], [], 0
    for i, label in enumerate(labels):
      visible = owner == i + 1
      if int(visible.sum()) < params.min_visible_area:
        num_occluded += 1
        continue
      masks.append(visible)
      kept_labels.append(label)
    if masks:
      return {
          "image": image,
          "masks": np.stack(masks),
          "labels": np.asarray(kept_labels, np.int64),
          "num_occluded": num_occluded,
      }


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of example `index` of `split`: examples are independent."""
  return np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
  """(y0, x0, y1, x1) of a non-empty bool mask, continuous pixel coordinates."""
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def encode_example(ex: dict[str, Any], index: int,
                   per_object: list[dict[str, Any]]) -> dict[str, Any]:
  """A drawn example (``draw_example``'s keys ``image``, ``masks``,
  ``num_occluded``) as the builders store it: PNG bytes for the image and
  each mask, each object's tight box as normalised ``(ymin, xmin, ymax,
  xmax)`` (a TFDS ``BBox`` in the builder) and its area, plus the object's
  fields in ``per_object`` (its label, and its keypoints for the figures)."""
  h, w = ex["image"].shape[:2]
  objects = []
  for mask, fields in zip(ex["masks"], per_object, strict=True):
    y0, x0, y1, x1 = _tight_box(mask)
    objects.append({
        "bbox": (y0 / h, x0 / w, y1 / h, x1 / w),
        "mask": png_bytes(mask.astype(np.uint8)),  # decodes to [H, W, 1]
        "area": int(mask.sum()),
        **fields,
    })
  return {"image": png_bytes(ex["image"]), "image_id": index + 1,
          "num_occluded": ex["num_occluded"], "objects": objects}


def encoded_shapes_example(seed: int, split: str, index: int,
                           params: DrawParams = DrawParams()) -> dict[str, Any]:
  """Example ``index`` of the shapes dataset's ``split`` as the builder
  stores it (:func:`encode_example`; each object's 0-based label)."""
  ex = draw_example(example_rng(seed, split, index), params)
  return encode_example(ex, index, [{"label": int(label)} for label in ex["labels"]])


def shapes_examples(seed: int, split: str, num: int, **kwargs) -> Iterator[dict[str, Any]]:
  """:func:`encoded_shapes_example` for indices 0..num-1 (:func:`generate`)."""
  return generate(functools.partial(encoded_shapes_example, seed, split), num, **kwargs)
