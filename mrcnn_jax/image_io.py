"""Image files -> RGB uint8 arrays (PIL and numpy, no TensorFlow): the one
rule ``mrcnn-jax predict`` reads images by and the COCO builder re-encodes
non-JPEG/PNG files by, so that both give the pixels the tf.data pipeline's
``tf.io.decode_image(channels=3)`` gives for the same JPEG or PNG
(tests/test_image_io.py checks PNG bit for bit):

==========================  ==================================================
grayscale (``L``, ``1``)    repeated into three channels
alpha (``RGBA``, ``LA``,    dropped, not composited
``PA``)
palette (``P``)             looked up (its transparency dropped)
CMYK                        PIL's conversion (JPEG: libjpeg's in TF, within a
                            few levels of PIL's)
16-bit samples (``I;16*``,  the high byte of each sample, as libpng's
``I`` in [0, 65535], 16-bit 16->8 strip gives in TF; PIL's own
RGB PNG)                    ``convert("RGB")`` would clip them to 255 instead:
                            a white image, silently
32-bit float or integer     ``ValueError``: no range to map from; convert the
beyond 16 bits              file to 8-bit RGB first
``F``, ``I``
==========================  ==================================================

A PNG's chunk checksums are verified (PIL skips those of the pixel data
otherwise); JPEG carries none. EXIF orientation is not applied (COCO annotations refer to the pixels as
stored; TF ignores it too); of an animation the first frame is read.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image, where: str = "image") -> np.ndarray:
  """uint8 [H, W, 3] of an opened PIL image by the rules of the module
  docstring; ``where`` names it in errors (ValueError)."""
  mode = image.mode
  if mode in _SIXTEEN_BIT or mode == "I":
    samples = np.asarray(image)
    if mode == "I" and samples.size and (samples.min() < 0 or samples.max() > 65535):
      raise ValueError(f"{where} has 32-bit integer samples (PIL mode I) beyond 16 bits; "
                       "convert it to 8-bit RGB first")
    gray = (samples.astype(np.uint32) >> 8).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode == "F":
    raise ValueError(f"{where} has 32-bit float samples (PIL mode F), which have no "
                     "standard range; convert it to 8-bit RGB first")
  try:
    rgb = image.convert("RGB")
  except (ValueError, OSError) as e:  # e.g. LAB, HSV: no conversion
    raise ValueError(f"{where}: cannot convert PIL mode {mode} to RGB: {e}") from e
  return np.asarray(rgb)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
  """uint8 [H, W, 3] of an image file (any format PIL reads).

  Raises FileNotFoundError if there is no such file, and ValueError naming
  the file when it is empty, not an image, truncated or corrupt, larger than
  PIL's decompression-bomb limit, or of a pixel format with no RGB meaning.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such image file: {path}")
  if os.path.getsize(path) == 0:
    raise ValueError(f"image {path} is empty (0 bytes)")
  try:
    with Image.open(path) as image:
      if image.format == "PNG":
        # Checks every chunk's CRC-32, which load() skips for the pixel data
        # (IDAT): a damaged PNG would decode to wrong pixels, silently
        # (found by fuzzing; TF's libpng checks them in the pipeline).
        image.verify()
    with Image.open(path) as image:
      image.load()  # decode now: truncated and corrupt data fail here
      return to_rgb(image, f"image {path}")
  except ValueError as e:
    if path in str(e):
      raise
    raise ValueError(f"image {path} cannot be read: {e}") from e
  except Exception as e:  # noqa: BLE001 - PIL's decoders raise many types
    # (UnidentifiedImageError and truncation are OSErrors; SyntaxError,
    # struct.error, DecompressionBombError, ... for malformed files)
    raise ValueError(f"image {path} cannot be read as an image "
                     f"({type(e).__name__}: {e})") from e
