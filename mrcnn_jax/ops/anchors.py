"""FPN anchors, in torchvision's order and rounding.

Shape shorthand: L levels, A anchors per location, H_l x W_l the grid of
level l. Anchors are xyxy in input pixels of the padded canvas.

Anchors depend only on static shapes, so they are computed with numpy at
trace time and enter the jitted program as constants.

Order (must match the RPN head's output flattening): for each level, anchors
are laid out as [H_l, W_l, A] -> flattened row-major, and the A anchors of a
location follow the aspect ratios in the order given (one size per level).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
  """Zero-centred base anchors [len(ratios) * len(sizes), 4] for one level.

  Matches torchvision's ``AnchorGenerator.generate_anchors``: for aspect
  ratio r = h/w, h_ratio = sqrt(r), w_ratio = 1/h_ratio, widths =
  w_ratio * size, and the half-extents are rounded to integers
  (``round`` is half-to-even, as torch.round).
  """
  scales = np.asarray(sizes, np.float32)
  ratios = np.asarray(aspect_ratios, np.float32)
  h_ratios = np.sqrt(ratios)
  w_ratios = np.float32(1.0) / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
  base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2.0)
  return np.round(base).astype(np.float32)


def level_strides(canvas_size: tuple[int, int], grid_size: tuple[int, int]) -> tuple[int, int]:
  """torchvision's stride for a level: integer division of the padded image
  size by the grid size. For P6 on a canvas whose P5 grid is odd (e.g. 800
  px: P5 25 rows, P6 13 rows) this gives 61, not 64; we reproduce it so that
  converted checkpoints produce the same proposals."""
  return canvas_size[0] // grid_size[0], canvas_size[1] // grid_size[1]


def grid_anchors(canvas_size: tuple[int, int], grid_size: tuple[int, int],
                 base: np.ndarray) -> np.ndarray:
  """Anchors [H_l * W_l * A, 4] for one level, order (y, x, a)."""
  stride_h, stride_w = level_strides(canvas_size, grid_size)
  shift_x = np.arange(grid_size[1], dtype=np.float32) * stride_w
  shift_y = np.arange(grid_size[0], dtype=np.float32) * stride_h
  sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
  shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
  return (shifts + base[None, :, :]).reshape(-1, 4)


def fpn_anchors(canvas_size: tuple[int, int], grid_sizes: Sequence[tuple[int, int]],
                sizes: Sequence[Sequence[float]],
                aspect_ratios: Sequence[Sequence[float]]) -> list[np.ndarray]:
  """Anchors for every level: a list of [H_l * W_l * A_l, 4] float32 arrays.

  Args:
    canvas_size: (H, W) of the padded network input.
    grid_sizes: (H_l, W_l) of each feature level, finest first.
    sizes: anchor sizes per level, e.g. ((32,), (64,), (128,), (256,), (512,)).
    aspect_ratios: ratios per level, e.g. ((0.5, 1.0, 2.0),) * 5.
  """
  if not (len(grid_sizes) == len(sizes) == len(aspect_ratios)):
    raise ValueError(
        f"anchor config: {len(grid_sizes)} feature levels but {len(sizes)} "
        f"size tuples and {len(aspect_ratios)} aspect-ratio tuples")
  return [grid_anchors(tuple(canvas_size), tuple(g), cell_anchors(s, r))
          for g, s, r in zip(grid_sizes, sizes, aspect_ratios)]


def num_anchors_per_location(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> int:
  return len(sizes) * len(aspect_ratios)
