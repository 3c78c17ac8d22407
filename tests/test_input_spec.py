"""Tests for the input rules (mrcnn_jax/input_spec.py): one resize rule that
the numpy preprocessing and the tf.data pipeline share and that equals real
torchvision's (tests/data/torchvision_resize.json, written by
scripts/make_resize_fixture.py with torchvision 0.28), one canvas choice, and
validation errors that name the config field."""

import json
import math
import os

import ml_collections
import numpy as np
import pytest

from mrcnn_jax import preprocess
from mrcnn_jax.input_spec import (IMAGENET_MEAN, IMAGENET_STD, SIZE_DIVISIBILITY, InputSpec,
                                  square_canvas)

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "torchvision_resize.json")
COCO_CANVASES = ((800, 1344), (1344, 800))


@pytest.fixture(scope="module")
def torchvision_cases():
  """{(min_size, max_size): [(H, W, eager (h, w), scripted (h, w)), ...]}."""
  with open(FIXTURE) as f:
    data = json.load(f)
  return {(c["min_size"], c["max_size"]): [(r[0], r[1], tuple(r[2:4]), tuple(r[4:6]))
                                           for r in c["rows"]]
          for c in data["cases"]}


def _spec(min_size, max_size, **kwargs):
  kwargs.setdefault("canvases", (square_canvas(max_size),))
  return InputSpec(min_sizes=min_size, max_size=max_size, **kwargs)


def _some_rows(rows, n=8, max_side=1400):
  """A few rows, those where torchvision's two branches disagree first (the
  ones a float32 scale would get wrong), plus a capped one."""
  rows = [r for r in rows if max(r[:2]) <= max_side]
  differ = [r for r in rows if r[2] != r[3]]
  capped = [r for r in rows if max(r[:2]) >= 3 * min(r[:2])]
  return differ[:n - 2] + capped[-2:]


# ------------------------------------------------------------------------------
# The resize rule against torchvision.
# ------------------------------------------------------------------------------


def test_fixture_covers_the_cases_that_matter(torchvision_cases):
  assert set(torchvision_cases) >= {(800, 1333), (640, 1333)}
  coco = {(h, w): eager for h, w, eager, _ in torchvision_cases[(800, 1333)]}
  assert coco[(480, 640)] == (800, 1066)  # torchvision keeps 800 rows here
  assert coco[(334, 500)] == (799, 1197)  # but not here: 800 / 334 rounds down
  assert coco[(539, 640)] == (799, 949)
  for (min_size, max_size), rows in torchvision_cases.items():
    assert len(rows) >= 100
    # max_size binds (long side max_size, short side below min_size) ...
    assert any(max(e) == max_size and min(e) < min_size for _, _, e, _ in rows)
    # ... and the short side is sometimes min_size - 1 (rounding).
    assert any(min(e) == min_size - 1 and max(e) < max_size for _, _, e, _ in rows)


def test_resized_size_equals_torchvision(torchvision_cases):
  for (min_size, max_size), rows in torchvision_cases.items():
    spec = _spec(min_size, max_size)
    wrong = [(h, w, spec.resized_size(h, w), eager) for h, w, eager, _ in rows
             if spec.resized_size(h, w) != eager]
    assert not wrong, (min_size, max_size, wrong[:5])


def test_the_grid_tells_float32_rules_apart(torchvision_cases):
  """A float32 scale (torchvision's TorchScript branch, or float32 division as
  the pipeline had) gives other sizes on this grid, so the test above fails
  for them."""
  def float32_scale(h, w, min_size, max_size):
    scale = float(min(np.float32(min_size) / np.float32(min(h, w)),
                      np.float32(max_size) / np.float32(max(h, w))))
    return math.floor(h * scale), math.floor(w * scale)

  for (min_size, max_size), rows in torchvision_cases.items():
    assert sum(eager != scripted for _, _, eager, scripted in rows) >= 10
    assert sum(float32_scale(h, w, min_size, max_size) != eager
               for h, w, eager, _ in rows) >= 10


def test_tf_resized_size_equals_torchvision(torchvision_cases):
  tf = pytest.importorskip("tensorflow")
  from mrcnn_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  for (min_size, max_size), rows in torchvision_cases.items():
    h, w = (tf.constant([r[i] for r in rows], tf.int32) for i in (0, 1))
    new_h, new_w, _ = pipeline.resized_size(h, w, min_size, max_size)
    got = list(zip(new_h.numpy().tolist(), new_w.numpy().tolist()))
    want = [eager for _, _, eager, _ in rows]
    wrong = [(r[:2], g, e) for r, g, e in zip(rows, got, want) if g != e]
    assert not wrong, (min_size, max_size, wrong[:5])


def _blank_examples(sizes):
  return [{"image": np.zeros((h, w, 3), np.uint8), "image_id": np.int64(i),
           "objects": {"bbox": np.zeros((0, 4), np.float32),
                       "label": np.zeros((0,), np.int64),
                       "mask": np.zeros((0, h, w, 1), np.uint8)}}
          for i, (h, w) in enumerate(sizes)]


@pytest.mark.parametrize("min_sizes,eval_min_size,case", [
    ((640, 800), None, (800, 1333)),  # evaluation: the last min_size
    ((800,), 640, (640, 1333)),  # evaluation: eval_min_size
])
def test_make_pipeline_image_size_equals_torchvision(torchvision_cases, min_sizes,
                                                     eval_min_size, case):
  tf = pytest.importorskip("tensorflow")
  from mrcnn_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  rows = _some_rows(torchvision_cases[case])
  spec = InputSpec(min_sizes=min_sizes, max_size=1333, canvases=COCO_CANVASES,
                   eval_min_size=eval_min_size)
  examples = _blank_examples([r[:2] for r in rows])
  signature = {"image": tf.TensorSpec([None, None, 3], tf.uint8),
               "image_id": tf.TensorSpec([], tf.int64),
               "objects": {"bbox": tf.TensorSpec([None, 4], tf.float32),
                           "label": tf.TensorSpec([None], tf.int64),
                           "mask": tf.TensorSpec([None, None, None, 1], tf.uint8)}}
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)
  batches = pipeline.make_pipeline(ds, spec=spec, train=False, batch_dims=(1,),
                                   max_instances=2, gt_mask_size=4, drop_remainder=False)
  seen = {}
  for batch in pipeline.numpy_batches(batches):
    size = tuple(int(v) for v in batch["image_size"][0])
    seen[int(batch["image_id"][0])] = size
    assert batch["image"].shape[1:3] == spec.canvas_for(*size)
  assert seen == {i: eager for i, (_, _, eager, _) in enumerate(rows)}


def test_prepare_image_equals_torchvision(torchvision_cases):
  for case in ((800, 1333), (64, 96)):
    spec = _spec(*case, canvases=COCO_CANVASES) if case[0] == 800 else _spec(*case)
    for h, w, eager, _ in _some_rows(torchvision_cases[case], n=6):
      x, size = preprocess.prepare_image(np.zeros((h, w, 3), np.uint8), spec)
      assert x.shape == eager + (3,) and size == eager, (h, w)
      np.testing.assert_allclose(x[0, 0], -np.asarray(IMAGENET_MEAN) / IMAGENET_STD,
                                 rtol=1e-6)
      batch, sizes = preprocess.pad_to_spec_canvas([x], spec)
      assert batch.shape == (1,) + spec.canvas_for(*eager) + (3,)
      np.testing.assert_array_equal(sizes, [eager])


def test_prepare_image_short_side_and_batching():
  spec = InputSpec(min_sizes=(32, 64), max_size=96, canvases=((64, 96), (96, 64)),
                   eval_min_size=48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  image = np.full((40, 50, 3), 255, np.uint8)
  x, size = preprocess.prepare_image(image, spec)
  assert size == (48, 60) == x.shape[:2]  # eval_min_size, not the last min_size
  np.testing.assert_allclose(x, 2.0, rtol=1e-6)  # (1 - 0.5) / 0.25
  assert preprocess.prepare_image(image, spec, min_size=32)[1] == (32, 40)
  y, _ = preprocess.prepare_image(image.transpose(1, 0, 2), spec)  # portrait
  batch, sizes = preprocess.pad_to_spec_canvas([x, x], spec)
  assert batch.shape == (2, 64, 96, 3) and sizes.tolist() == [[48, 60]] * 2
  assert preprocess.pad_to_spec_canvas([y], spec)[0].shape == (1, 96, 64, 3)
  with pytest.raises(ValueError, match="batch them apart"):
    preprocess.pad_to_spec_canvas([x, y], spec)
  batch2, sizes2 = preprocess.prepare_batch([image, image], spec)
  np.testing.assert_array_equal(batch2, batch)
  np.testing.assert_array_equal(sizes2, sizes)


# ------------------------------------------------------------------------------
# Canvases, config, validation.
# ------------------------------------------------------------------------------


def test_canvas_for_goes_by_the_resized_orientation():
  spec = InputSpec(min_sizes=800, max_size=1333, canvases=COCO_CANVASES)
  assert spec.bucketed
  assert spec.canvas_for(800, 1066) == (800, 1344)
  assert spec.canvas_for(800, 800) == (800, 1344)  # square: landscape
  assert spec.canvas_for(1066, 800) == (1344, 800)
  with pytest.raises(ValueError, match=r"config\.data\.canvases=.*config\.data\.max_size=1333"):
    spec.canvas_for(900, 1000)
  one = InputSpec(min_sizes=64, max_size=64, canvases=((64, 64),))
  assert not one.bucketed and one.canvas_for(32, 64) == one.canvas_for(64, 32) == (64, 64)
  with pytest.raises(ValueError, match=r"config\.data\.canvas=\(64, 64\).*max_size=64"):
    one.canvas_for(65, 10)
  same = InputSpec(min_sizes=64, max_size=96, canvases=((96, 96), (96, 96)))
  assert not same.bucketed and same.canvases == ((96, 96),)


def _data(**fields):
  return ml_collections.ConfigDict(dict(dict(min_size=64, max_size=96), **fields))


def test_from_config():
  coco = _data(min_size=(640, 672, 704, 736, 768, 800), max_size=1333, canvases=COCO_CANVASES)
  spec = InputSpec.from_config(coco)
  assert spec.min_sizes == (640, 672, 704, 736, 768, 800)
  assert spec.eval_min_size == 800  # torchvision: the last one
  assert spec.canvases == COCO_CANVASES and spec.max_size == 1333
  assert spec.size_divisibility == SIZE_DIVISIBILITY == 32
  assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD
  spec = InputSpec.from_config(_data(canvas=(96, 96), eval_min_size=48,
                                     mean=(0.5, 0.5, 0.5), std=[0.2, 0.2, 0.2]))
  assert spec.min_sizes == (64,) and spec.eval_min_size == 48
  assert spec.canvases == ((96, 96),) and not spec.bucketed
  assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.2, 0.2, 0.2)
  # A placeholder left unset (None) counts as absent.
  placeholder = _data(canvas=(96, 96), eval_min_size=ml_collections.FieldReference(
      None, field_type=int))
  assert InputSpec.from_config(placeholder).eval_min_size == 64


@pytest.mark.parametrize("fields,match", [
    (dict(min_size=128, canvas=(128, 128)),
     r"config\.data\.min_size=128 must be <= config\.data\.max_size=96"),
    (dict(min_size=(32, 128), canvas=(128, 128)),
     r"config\.data\.min_size=\(32, 128\) must be <= config\.data\.max_size"),
    (dict(min_size=(), canvas=(96, 96)), r"config\.data\.min_size must be"),
    (dict(max_size=0, canvas=(96, 96)), r"config\.data\.max_size must be"),
    (dict(eval_min_size=128, canvas=(96, 96)),
     r"config\.data\.eval_min_size=128 must be <= config\.data\.max_size=96"),
    (dict(canvas=(100, 100)), r"config\.data\.canvas=\(100, 100\).*multiple of 32.*\(128, 128\)"),
    (dict(canvases=((64, 100), (100, 64))), r"config\.data\.canvases=.*multiple of 32"),
    (dict(canvas=(64, 96)), r"config\.data\.canvas=\(64, 96\) cannot hold.*"
                            r"config\.data\.max_size=96.*config\.data\.canvases"),
    (dict(canvases=((64, 90), (96, 64))),
     r"config\.data\.canvases=\(\(64, 90\), \(96, 64\)\) cannot hold.*config\.data\.max_size=96"),
    (dict(canvases=((32, 96), (96, 64))), r"config\.data\.canvases=.*cannot hold.*H >= 64"),
    (dict(canvases=((64, 96),)), r"config\.data\.canvases must be \(\(H, W\) landscape"),
    (dict(canvas=(96,)), r"config\.data\.canvas \(H, W\) must be 2 positive ints"),
    (dict(), r"exactly one of canvas \(H, W\) and canvases"),
    (dict(canvas=(96, 96), canvases=((64, 96), (96, 64))), r"exactly one of canvas"),
    (dict(canvas=(96, 96), mean=(0.5, 0.5)), r"config\.data\.mean must be 3"),
    (dict(canvas=(96, 96), std=(0.5, 0.0, 0.5)), r"config\.data\.std must be positive"),
])
def test_validation_errors_name_the_config_field(fields, match):
  with pytest.raises(ValueError, match=match):
    InputSpec.from_config(_data(**fields))


def test_mean_and_std_are_defined_once():
  """The ImageNet constants live in input_spec.py only (issue 8)."""
  root = os.path.join(os.path.dirname(__file__), os.pardir, "mrcnn_jax")
  holders = []
  for folder, _, files in os.walk(root):
    for name in files:
      if name.endswith(".py"):
        with open(os.path.join(folder, name)) as f:
          text = f.read()
        if "0.485" in text or "0.229" in text:
          holders.append(name)
  assert holders == ["input_spec.py"]
