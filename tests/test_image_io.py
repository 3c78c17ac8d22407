"""Image files of every kind through both readers: mrcnn_jax/image_io.py (what
`mrcnn-jax predict` reads with, PIL + numpy) and the COCO builder's
``_image_bytes`` decoded by the tf.data pipeline. The same file must give the
same pixels on both paths, and a bad file a ValueError naming it."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mrcnn_jax import image_io

H, W = 6, 8
RNG = np.random.default_rng(0)
# Smooth, so that JPEG keeps it within a few levels.
_Y, _X = np.mgrid[0:H, 0:W]
RGB = np.stack([20 + 25 * _X, 30 + 30 * _Y, 200 - 10 * _X - 12 * _Y], -1).astype(np.uint8)
GRAY16 = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
RGB16 = RNG.integers(0, 65536, (H, W, 3), dtype=np.uint16)


def _chunk(kind, body, crc_of=None):
  crc = zlib.crc32(kind + (body if crc_of is None else crc_of))
  return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png(array, bit_depth=8, damaged_pixels=None):
  """An RGB PNG written chunk by chunk (PIL writes no 16-bit RGB). With
  `damaged_pixels` the pixel data (IDAT) is theirs, compressed, while its
  CRC-32 is that of `array`'s: a transmission error that leaves the zlib
  stream valid, which PIL's load() decodes without a word (found by fuzzing)."""
  h, w, _ = array.shape
  dtype = ">u2" if bit_depth == 16 else np.uint8

  def idat(a):
    return zlib.compress(b"".join(b"\x00" + a[y].astype(dtype).tobytes() for y in range(h)))
  body = idat(array if damaged_pixels is None else damaged_pixels)
  return (b"\x89PNG\r\n\x1a\n"
          + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, 2, 0, 0, 0))
          + _chunk(b"IDAT", body, crc_of=idat(array)) + _chunk(b"IEND", b""))


def _png_bomb():
  """A PNG whose header claims 20000 x 20000 pixels (PIL's decompression-bomb
  limit is 178,956,970); the data is never read."""
  return (b"\x89PNG\r\n\x1a\n"
          + _chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
          + _chunk(b"IEND", b""))


def _png16_rgb(path, array):
  with open(path, "wb") as f:
    f.write(_png(array, 16))


def _save(path, image, fmt, **kw):
  image.save(path, format=fmt, **kw)


def _high_byte(a):
  return (a >> 8).astype(np.uint8)


# name -> (writer, expected RGB, exact): what each kind must read as.
KINDS = {
    "rgb.png": (lambda p: _save(p, Image.fromarray(RGB), "PNG"), RGB, True),
    "gray.png": (lambda p: _save(p, Image.fromarray(RGB[..., 0]), "PNG"),
                 np.repeat(RGB[..., :1], 3, -1), True),
    "rgba.png": (lambda p: _save(p, Image.fromarray(np.dstack([RGB, RGB[..., :1]])), "PNG"),
                 RGB, True),  # alpha dropped, not composited
    "la.png": (lambda p: _save(p, Image.fromarray(np.dstack([RGB[..., 0], RGB[..., 1]]), "LA"),
                               "PNG"), np.repeat(RGB[..., :1], 3, -1), True),
    "palette.png": (lambda p: _save(p, Image.fromarray(RGB).quantize(16), "PNG",
                                    transparency=0),
                    np.asarray(Image.fromarray(RGB).quantize(16).convert("RGB")), True),
    "gray16.png": (lambda p: _save(p, Image.fromarray(GRAY16), "PNG"),
                   np.repeat(_high_byte(GRAY16)[..., None], 3, -1), True),
    "rgb16.png": (lambda p: _png16_rgb(p, RGB16), _high_byte(RGB16), True),
    "gray16.tif": (lambda p: _save(p, Image.fromarray(GRAY16), "TIFF"),
                   np.repeat(_high_byte(GRAY16)[..., None], 3, -1), True),
    "gray16.pgm": (lambda p: _save(p, Image.fromarray(GRAY16), "PPM"),
                   np.repeat(_high_byte(GRAY16)[..., None], 3, -1), True),
    "cmyk.tif": (lambda p: _save(p, Image.fromarray(RGB).convert("CMYK"), "TIFF"),
                 np.asarray(Image.fromarray(RGB).convert("CMYK").convert("RGB")), True),
    "rgb.bmp": (lambda p: _save(p, Image.fromarray(RGB), "BMP"), RGB, True),
    "rgb.jpg": (lambda p: _save(p, Image.fromarray(RGB), "JPEG", quality=95,
                                   subsampling=0), RGB, False),
    "cmyk.jpg": (lambda p: _save(p, Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95,
                                   subsampling=0),
                 RGB, False),
    "gray.jpg": (lambda p: _save(p, Image.fromarray(RGB[..., 0]), "JPEG", quality=95,
                                   subsampling=0),
                 np.repeat(RGB[..., :1], 3, -1), False),
}


def _jpeg(quality=95):
  buf = io.BytesIO()
  Image.fromarray(RGB).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


# name -> (bytes, message): files no reader may accept.
BAD = {
    "damaged.png": (_png(RGB, damaged_pixels=255 - RGB), "cannot be read"),
    "bomb.png": (_png_bomb(), "cannot be read as an image .*DecompressionBombError"),
    "empty.jpg": (b"", "is empty"),
    "text.png": (b"not an image at all", "cannot be read"),
    "truncated.jpg": (_jpeg()[:200], "cannot be read"),
    "corrupt.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(64)), "cannot be read"),
}


def _write_float_tiff(p):
  _save(p, Image.fromarray(RGB[..., 0].astype(np.float32)), "TIFF")


def _write_int32_tiff(p):
  _save(p, Image.fromarray(GRAY16.astype(np.int32) * 100), "TIFF")


UNSUPPORTED = {"float.tif": (_write_float_tiff, "32-bit float"),
               "int32.tif": (_write_int32_tiff, "beyond 16 bits")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  for name, (write, _, _) in KINDS.items():
    write(str(root / name))
  for name, (data, _) in BAD.items():
    (root / name).write_bytes(data)
  for name, (write, _) in UNSUPPORTED.items():
    write(str(root / name))
  return root


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_reads_as_rgb(files, name):
  _, expected, exact = KINDS[name]
  got = image_io.read_rgb(files / name)
  assert got.dtype == np.uint8 and got.shape == (H, W, 3)
  if exact:
    np.testing.assert_array_equal(got, expected)
  else:  # JPEG is lossy
    assert np.abs(got.astype(int) - expected).max() <= 8


def test_pil_alone_gives_silently_wrong_pixels(files):
  """What read_rgb guards against: PIL's convert("RGB") clips 16-bit samples
  at 255 (a white image), and its load() skips the pixel data's CRC."""
  with Image.open(files / "gray16.png") as im:
    assert im.mode == "I;16" and (np.asarray(im.convert("RGB")) == 255).mean() > 0.9
  with Image.open(files / "damaged.png") as im:
    np.testing.assert_array_equal(np.asarray(im.convert("RGB")), 255 - RGB)


@pytest.mark.parametrize("name", list(BAD) + list(UNSUPPORTED))
def test_bad_files_raise_naming_the_file(files, name):
  message = BAD[name][1] if name in BAD else UNSUPPORTED[name][1]
  with pytest.raises(ValueError, match=message) as info:
    image_io.read_rgb(files / name)
  assert str(files / name) in str(info.value)
  with pytest.raises(FileNotFoundError, match="no such image"):
    image_io.read_rgb(files / "missing.png")


def test_the_builder_gives_the_pixels_predict_reads(files):
  """COCO builder (bytes kept or re-encoded, then the pipeline's TF decode)
  == image_io (predict): bit for bit except JPEG (two IDCTs)."""
  pytest.importorskip("tensorflow")
  from mrcnn_jax.data import coco, pipeline
  from mrcnn_jax.data.coco_json import ImageRecord
  for i, (name, (_, _, exact)) in enumerate(KINDS.items()):
    record = ImageRecord(i, name, H, W)
    data, reencoded = coco._image_bytes(str(files / name), record)
    assert reencoded == (os.path.splitext(name)[1] not in (".png", ".jpg")), name
    built = pipeline._decode_image(data).numpy()
    read = image_io.read_rgb(files / name)
    if exact:
      np.testing.assert_array_equal(built, read, err_msg=name)
    else:  # TF decodes JPEG with libjpeg's fast integer IDCT, PIL with the
      # accurate one: a few levels apart on this 6 x 8 image
      diff = np.abs(built.astype(int) - read)
      assert diff.mean() <= 6 and diff.max() <= 12, (name, diff.max())
  for name, message in [(n, m) for n, (_, m) in BAD.items()] + [
      (n, m) for n, (_, m) in UNSUPPORTED.items()]:
    with pytest.raises(ValueError, match="is empty" if message == "is empty" else None) as info:
      coco._image_bytes(str(files / name), ImageRecord(7, name, H, W))
    assert f"{files / name} (image id 7)" in str(info.value)
  with pytest.raises(ValueError, match=r"is 6 x 8 \(height x width\) but the json says 8 x 6"):
    coco._image_bytes(str(files / "rgb.png"), ImageRecord(1, "rgb.png", W, H))
