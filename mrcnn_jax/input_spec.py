"""The input rules, in one place: how an image is resized, which canvas it is
padded to and how it is normalised.

Pure Python + numpy (no TensorFlow, no flax), so the tf.data pipeline
(``mrcnn_jax.data.pipeline``), the numpy preprocessing of ``predict`` and
export (``mrcnn_jax.preprocess``) and the model (``SIZE_DIVISIBILITY``) all
read the same rules. Build one from a config with
``InputSpec.from_config(config.data)``.

Resizing is torchvision's ``GeneralizedRCNNTransform`` (eval mode):

  scale = min(min_size / min(H, W), max_size / max(H, W))
  (h, w) = (floor(H * scale), floor(W * scale))

in double precision, as torchvision 0.28 computes it eagerly (Python floats;
``F.interpolate(scale_factor=scale, recompute_scale_factor=True)`` takes
``floor(size * scale)``). The short side is not always ``min_size``: with
min_size 800 a 334 x 500 image becomes 799 x 1197 (800 / 334 rounds down),
480 x 640 becomes 800 x 1066. torchvision's TorchScript / ONNX branch
computes the scale as a float32 tensor instead and differs on about half of
all short sides (375 x 500 gets 799 rows there, 334 x 500 800); see
``tests/data/torchvision_resize.json``. A side is never less than 1 pixel
(where the formula gives 0, for extreme aspect ratios).

Canvases: one ``canvas`` (H, W) for every image, or orientation buckets
``canvases = (landscape (H, W), portrait (H, W))``: a resized image goes to
the landscape canvas when its width >= its height (a square one too), else to
the portrait one (:meth:`InputSpec.canvas_for`). Every canvas side is a
multiple of ``SIZE_DIVISIBILITY`` (the backbone's largest stride) and the
canvases hold every resized image, which the spec checks when it is built.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from mrcnn_jax.client import resized_size  # noqa: F401  (the rule; numpy-only module)

# The largest stride of the backbone / FPN: canvases are multiples of it.
SIZE_DIVISIBILITY = 32
# torchvision's ImageNet normalisation of [0, 1] RGB images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def square_canvas(max_size: int, multiple: int = SIZE_DIVISIBILITY) -> tuple[int, int]:
  """The smallest square canvas that holds any resized image: max_size
  rounded up to a multiple of ``multiple``."""
  side = -(-int(max_size) // multiple) * multiple
  return side, side


def _ints(value, what: str, n: int | None = None) -> tuple[int, ...]:
  """A positive int or a sequence of them as a tuple (of length n if given)."""
  try:
    values = (value,) if isinstance(value, numbers.Number) else tuple(value)
    ok = bool(values) and all(
        not isinstance(v, bool) and int(v) == v and v > 0 for v in values)
  except (TypeError, ValueError):
    ok = False
  if not ok or (n is not None and len(values) != n):
    shape = "a positive int or a non-empty sequence of them" if n is None else (
        f"{n} positive ints")
    raise ValueError(f"{what} must be {shape}, got {value!r}")
  return tuple(int(v) for v in values)


def _floats(value, what: str) -> tuple[float, float, float]:
  try:
    values = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    values = ()
  if len(values) != 3 or not all(math.isfinite(v) for v in values):
    raise ValueError(f"{what} must be 3 finite numbers (R, G, B), got {value!r}")
  return values


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """How images become network inputs; validated when built.

  Attributes:
    min_sizes: short side(s) in training (``config.data.min_size``); with
      several, each training example draws one.
    max_size: cap on the long side after resizing (``config.data.max_size``).
    canvases: ``((H, W),)`` for one canvas (``config.data.canvas``) or
      ``(landscape (H, W), portrait (H, W))`` (``config.data.canvases``); two
      equal canvases are kept as one.
    eval_min_size: short side in evaluation and prediction
      (``config.data.eval_min_size``); None (or 0) means the last of
      ``min_sizes``, torchvision's rule.
    size_divisibility: every canvas side is a multiple of it.
    mean, std: per-channel normalisation of the [0, 1] RGB image
      (``config.data.mean`` / ``std``, ImageNet's by default).
  """

  min_sizes: tuple[int, ...]
  max_size: int
  canvases: tuple[tuple[int, int], ...]
  eval_min_size: int | None = None
  size_divisibility: int = SIZE_DIVISIBILITY
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD

  def __post_init__(self):
    put = lambda name, value: object.__setattr__(self, name, value)
    put("min_sizes", _ints(self.min_sizes, "config.data.min_size"))
    (max_size,) = _ints(self.max_size, "config.data.max_size", 1)
    put("max_size", max_size)
    eval_min_size = self.eval_min_size or self.min_sizes[-1]
    (eval_min_size,) = _ints(eval_min_size, "config.data.eval_min_size", 1)
    put("eval_min_size", eval_min_size)
    (divisibility,) = _ints(self.size_divisibility, "size_divisibility", 1)
    put("size_divisibility", divisibility)
    put("mean", _floats(self.mean, "config.data.mean"))
    put("std", _floats(self.std, "config.data.std"))
    if min(self.std) <= 0:
      raise ValueError(f"config.data.std must be positive, got {self.std}")
    if max(self.min_sizes) > max_size:
      raise ValueError(f"config.data.min_size={self._min_size_text()} must be <= "
                       f"config.data.max_size={max_size}")
    if eval_min_size > max_size:
      raise ValueError(f"config.data.eval_min_size={eval_min_size} must be <= "
                       f"config.data.max_size={max_size}")

    canvases = self.canvases
    if isinstance(canvases, (str, bytes)) or not hasattr(canvases, "__len__") or not (
        1 <= len(canvases) <= 2):
      raise ValueError("canvases must be ((H, W),) (config.data.canvas) or (landscape (H, W), "
                       f"portrait (H, W)) (config.data.canvases), got {canvases!r}")
    field = "config.data.canvas" if len(canvases) == 1 else "config.data.canvases"
    canvases = tuple(_ints(c, f"each canvas of {field} (H, W)", 2) for c in canvases)
    shown = canvases[0] if len(canvases) == 1 else canvases
    # The longest short side and the longest long side of a resized image.
    short = max(self.min_sizes + (eval_min_size,))
    if len(canvases) == 1:
      (h, w), = canvases
      if h < max_size or w < max_size:
        raise ValueError(
            f"config.data.canvas={shown} cannot hold every resized image: with "
            f"config.data.max_size={max_size} both sides must be >= {max_size} (e.g. "
            f"{square_canvas(max_size, divisibility)}), or use config.data.canvases "
            "(landscape, portrait)")
    else:
      (lh, lw), (ph, pw) = canvases
      if lh < short or lw < max_size or ph < max_size or pw < short:
        raise ValueError(
            f"config.data.canvases={shown} cannot hold every resized image: with "
            f"config.data.max_size={max_size} and a short side up to {short} "
            "(config.data.min_size / eval_min_size) the landscape canvas needs "
            f"H >= {short} and W >= {max_size}, the portrait one H >= {max_size} and "
            f"W >= {short}")
    if any(side % divisibility for c in canvases for side in c):
      rounded = tuple(tuple(-(-s // divisibility) * divisibility for s in c) for c in canvases)
      raise ValueError(
          f"{field}={shown}: every side must be a multiple of {divisibility} "
          f"(SIZE_DIVISIBILITY, the backbone's stride), e.g. "
          f"{rounded[0] if len(rounded) == 1 else rounded}")
    if len(canvases) == 2 and canvases[0] == canvases[1]:
      canvases = canvases[:1]
    put("canvases", canvases)
    put("_field", field)

  @classmethod
  def from_config(cls, data: Any) -> InputSpec:
    """From ``config.data``: ``min_size``, ``max_size``, ``canvas`` or
    ``canvases`` and the optional ``eval_min_size``, ``mean``, ``std``."""
    get = data.get if hasattr(data, "get") else lambda k, d=None: getattr(data, k, d)
    canvas, canvases = get("canvas"), get("canvases")
    if (canvas is None) == (canvases is None):
      raise ValueError("config.data needs exactly one of canvas (H, W) and canvases "
                       "((H, W) landscape, (H, W) portrait); got "
                       f"canvas={canvas!r}, canvases={canvases!r}")
    if canvas is not None:
      canvases = (canvas,)
    elif isinstance(canvases, (str, bytes)) or len(canvases) != 2:
      raise ValueError("config.data.canvases must be ((H, W) landscape, (H, W) portrait), "
                       f"got {canvases!r}")
    kwargs = {}
    for key in ("mean", "std"):
      if get(key) is not None:
        kwargs[key] = get(key)
    return cls(min_sizes=get("min_size"), max_size=get("max_size"), canvases=tuple(canvases),
               eval_min_size=get("eval_min_size"), **kwargs)

  @property
  def bucketed(self) -> bool:
    """True with two canvases (landscape, portrait), False with one."""
    return len(self.canvases) == 2

  def resized_size(self, height: int, width: int,
                   min_size: int | None = None) -> tuple[int, int]:
    """(new_h, new_w) of an H x W image: torchvision's rule (module
    docstring); ``min_size`` defaults to ``eval_min_size``."""
    if min_size is None:
      min_size = self.eval_min_size
    return resized_size(int(height), int(width), int(min_size), self.max_size)

  def canvas_for(self, height: int, width: int) -> tuple[int, int]:
    """The canvas (Hc, Wc) of a *resized* h x w image: the landscape one when
    w >= h, else the portrait one (the only one without buckets)."""
    canvas = self.canvases[0] if width >= height else self.canvases[-1]
    if height > canvas[0] or width > canvas[1]:
      raise ValueError(
          f"a resized image of {height} x {width} does not fit the canvas {canvas} of "
          f"{self.describe_canvases()}; config.data.max_size={self.max_size} "
          "should have capped it")
    return canvas

  def describe_canvases(self) -> str:
    """The canvases as the config field that set them, for messages."""
    shown = self.canvases[0] if self._field == "config.data.canvas" else (
        self.canvases * 2 if len(self.canvases) == 1 else self.canvases)
    return f"{self._field}={shown}"

  def _min_size_text(self) -> str:
    return str(self.min_sizes[0] if len(self.min_sizes) == 1 else self.min_sizes)
