"""Tests for the tf.data input pipeline (mrcnn_jax/data/pipeline.py)."""

import numpy as np
import pytest

# Accelerator machines often have JAX but no TensorFlow: skip there.
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_datasets")

from mrcnn_jax.data import pipeline  # pylint: disable=g-import-not-at-top
from mrcnn_jax.data import shapes  # pylint: disable=g-import-not-at-top
from mrcnn_jax.data.stream import StreamPosition  # pylint: disable=g-import-not-at-top
from mrcnn_jax.input_spec import InputSpec  # pylint: disable=g-import-not-at-top

TINY = dict(num_train=8, num_validation=4)
SPEC = InputSpec(min_sizes=(128,), max_size=256, canvases=((256, 256),))
SIZES = dict(spec=SPEC, max_instances=4, gt_mask_size=14)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  shapes.shapes_builder(path, **TINY)
  return path


def _example(h, w, rects, *, seed=0, labels=None, zero_boxes=()):
  """A synthetic input example with rectangular objects.

  rects: (y0, x0, y1, x1) integer pixel rectangles; each mask is its rectangle
  and its box is the rectangle in continuous coordinates. Indices in
  zero_boxes get a zero-width box.
  """
  rng = np.random.default_rng(seed)
  n = len(rects)
  masks = np.zeros((n, h, w, 1), np.uint8)
  bbox = np.zeros((n, 4), np.float32)
  for i, (y0, x0, y1, x1) in enumerate(rects):
    masks[i, y0:y1, x0:x1] = 1
    bbox[i] = (y0 / h, x0 / w, y1 / h, (x0 if i in zero_boxes else x1) / w)
  return {
      "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
      "image_id": np.int64(7),
      "objects": {
          "bbox": bbox,
          "label": np.asarray(labels if labels is not None else
                              [i % 3 for i in range(n)], np.int64),
          "mask": masks,
          "area": masks.sum(axis=(1, 2, 3)).astype(np.int64),
      },
  }


def _run(example, flip=False, **overrides):
  kwargs = dict(SIZES, **overrides)
  out = pipeline.preprocess_example(example, flip=flip, **kwargs)
  return {k: v.numpy() for k, v in out.items()}


def test_batch_contract(data_dir):
  ds = shapes.load_shapes("train", data_dir, **TINY)
  batches = pipeline.make_pipeline(ds, train=True, batch_dims=(2, 2), seed=0,
                                   **SIZES)
  # Deterministic order, and no autotuning thread for the teardown to join.
  assert batches.options().deterministic
  assert batches.options().autotune.enabled is False
  batch = next(pipeline.numpy_batches(batches))
  n, s = SIZES["max_instances"], SIZES["gt_mask_size"]
  expected = {
      "image": ((2, 2, 256, 256, 3), np.float32),
      "image_size": ((2, 2, 2), np.int32),
      "orig_size": ((2, 2, 2), np.int32),
      "scale": ((2, 2), np.float32),
      "image_id": ((2, 2), np.int32),
      "gt_boxes": ((2, 2, n, 4), np.float32),
      "gt_labels": ((2, 2, n), np.int32),
      "gt_valid": ((2, 2, n), np.bool_),
      "gt_masks": ((2, 2, n, s, s), np.float32),
      "num_dropped": ((2, 2), np.int32),
      "num_invalid": ((2, 2), np.int32),
      "num_crowd": ((2, 2), np.int32),
      "stream_index": ((2, 2), np.int64),
  }
  assert set(batch) == set(expected) == set(pipeline.OUTPUT_KEYS)
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape, key
    assert batch[key].dtype == dtype, key
  flat = {k: v.reshape((4,) + v.shape[2:]) for k, v in batch.items()}
  for i in range(4):
    h, w = flat["image_size"][i]
    oh, ow = flat["orig_size"][i]
    # Short side min_size or long side max_size (floor may take one pixel).
    assert abs(min(h, w) - 128) <= 1 or abs(max(h, w) - 256) <= 1
    np.testing.assert_allclose([h / oh, w / ow], flat["scale"][i], atol=0.01)
    assert np.all(flat["image"][i, h:] == 0) and np.all(
        flat["image"][i, :, w:] == 0)
    valid = flat["gt_valid"][i]
    k = valid.sum()
    assert k >= 1 and np.all(valid[:k]) and not np.any(valid[k:])
    assert np.all((flat["gt_labels"][i][valid] >= 1)
                  & (flat["gt_labels"][i][valid] <= 3))
    assert np.all(flat["gt_labels"][i][~valid] == 0)
    boxes = flat["gt_boxes"][i][valid]
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.all(boxes >= 0) and np.all(boxes[:, [2, 3]] <= np.array([w, h]) + 1e-3)
    masks = flat["gt_masks"][i]
    assert masks.min() >= 0 and masks.max() <= 1
    assert np.all(masks[valid].mean(axis=(1, 2)) > 0.1)
    assert np.all(masks[~valid] == 0)


def test_pipeline_is_deterministic_for_a_seed(data_dir):
  def first_batches(seed):
    ds = shapes.load_shapes("train", data_dir, **TINY)
    batches = pipeline.make_pipeline(ds, train=True, batch_dims=(4,),
                                     seed=seed, **SIZES)
    return [b for _, b in zip(range(3), pipeline.numpy_batches(batches))]

  a, b, c = first_batches(0), first_batches(0), first_batches(1)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)
  assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_flip_matches_flipping_the_input():
  h, w = 60, 90
  rects = [(5, 3, 40, 30), (20, 50, 58, 88), (0, 0, 12, 90)]
  example = _example(h, w, rects)
  # The same example mirrored by hand: image, masks and normalised boxes.
  mirrored = _example(h, w, rects)
  mirrored["image"] = example["image"][:, ::-1].copy()
  mirrored["objects"]["mask"] = example["objects"]["mask"][:, :, ::-1].copy()
  ymin, xmin, ymax, xmax = example["objects"]["bbox"].T
  mirrored["objects"]["bbox"] = np.stack([ymin, 1 - xmax, ymax, 1 - xmin], -1)

  plain = _run(example, flip=False)
  flipped = _run(example, flip=True)
  by_hand = _run(mirrored, flip=False)
  nh, nw = plain["image_size"]
  assert (nh, nw) == SPEC.resized_size(60, 90) == (128, 192)
  np.testing.assert_allclose(flipped["image"][:nh, :nw],
                             plain["image"][:nh, :nw][:, ::-1], atol=1e-5)
  assert np.all(flipped["image"][nh:] == 0) and np.all(
      flipped["image"][:, nw:] == 0)
  for key in ("image", "gt_boxes", "gt_masks"):
    np.testing.assert_allclose(flipped[key], by_hand[key], atol=1e-4,
                               err_msg=key)
  x1, y1, x2, y2 = plain["gt_boxes"][:3].T
  np.testing.assert_allclose(flipped["gt_boxes"][:3],
                             np.stack([nw - x2, y1, nw - x1, y2], -1),
                             atol=1e-4)
  np.testing.assert_allclose(flipped["gt_masks"],
                             plain["gt_masks"][:, :, ::-1], atol=1e-6)
  for key in ("gt_labels", "gt_valid", "image_size", "orig_size", "scale"):
    np.testing.assert_array_equal(flipped[key], plain[key])


def test_boxes_follow_the_resize():
  example = _example(64, 100, [(8, 10, 40, 60)])
  out = _run(example)
  # scale = min(128 / 64, 256 / 100) = 2 -> 128 x 200.
  assert tuple(out["image_size"]) == (128, 200)
  assert tuple(out["orig_size"]) == (64, 100)
  assert out["scale"] == pytest.approx(2.0)
  np.testing.assert_allclose(out["gt_boxes"][0], [20, 16, 120, 80], atol=1e-4)
  assert out["image_id"] == 7


def test_resized_size_follows_torchvision():
  # torchvision 0.28 (tests/data/torchvision_resize.json): 480 x 640 keeps
  # 800 rows, but 800 / 334 rounds down in double precision: 799.
  new_h, new_w, scale = pipeline.resized_size(480, 640, 800, 1333)
  assert (int(new_h), int(new_w)) == (800, 1066)
  assert float(scale) == pytest.approx(800 / 480)
  new_h, new_w, _ = pipeline.resized_size(334, 500, 800, 1333)
  assert (int(new_h), int(new_w)) == (799, 1197)
  new_h, new_w, _ = pipeline.resized_size(100, 300, 128, 256)
  assert (int(new_h), int(new_w)) == (85, 256)  # long side caps the scale


def test_full_box_mask_crops_to_ones_and_aligns():
  h, w = 100, 120
  example = _example(h, w, [(10, 20, 50, 70), (0, 0, h, w), (60, 4, 90, 60)])
  # Third object: its box spans 56 px but its mask only the left 28 px.
  # (Boxes at least S px per side: no bilinear blending at their edges.)
  example["objects"]["mask"][2, :, 32:] = 0
  masks = _run(example, gt_mask_size=28)["gt_masks"]
  assert masks[0].min() > 0.999  # box exactly around the mask
  assert masks[1].min() > 0.999  # whole image, edges included
  np.testing.assert_allclose(masks[2][:, :14], 1.0, atol=1e-6)
  np.testing.assert_allclose(masks[2][:, 14:], 0.0, atol=1e-6)


def test_more_objects_than_max_instances_keeps_the_largest():
  rects = [(0, 0, 5, 5), (10, 10, 40, 40), (0, 50, 8, 58), (50, 0, 70, 25),
           (45, 45, 90, 95), (80, 0, 84, 4)]
  example = _example(100, 100, rects, labels=[0, 1, 2, 0, 1, 2],
                     zero_boxes=(5,))
  out = _run(example, max_instances=3)
  # Valid areas: 25, 900, 64, 500, 2250 (the last object has a zero box).
  assert out["num_invalid"] == 1 and out["num_dropped"] == 2
  np.testing.assert_array_equal(out["gt_valid"], [True, True, True])
  np.testing.assert_array_equal(out["gt_labels"], [2, 1, 2])  # kept in order
  ratio = out["image_size"][1] / 100
  np.testing.assert_allclose(out["gt_boxes"][:, 0] / ratio, [10, 0, 45],
                             atol=1e-3)


def test_no_objects_gives_all_invalid_ground_truth():
  example = _example(50, 70, [])
  out = _run(example)
  assert not out["gt_valid"].any()
  assert np.all(out["gt_labels"] == 0) and np.all(out["gt_boxes"] == 0)
  assert np.all(out["gt_masks"] == 0)
  assert out["num_dropped"] == 0 and out["num_invalid"] == 0


def _generator_ds(examples):
  signature = {
      "image": tf.TensorSpec([None, None, 3], tf.uint8),
      "image_id": tf.TensorSpec([], tf.int64),
      "objects": {
          "bbox": tf.TensorSpec([None, 4], tf.float32),
          "label": tf.TensorSpec([None], tf.int64),
          "mask": tf.TensorSpec([None, None, None, 1], tf.uint8),
          "area": tf.TensorSpec([None], tf.int64),
      },
  }
  return tf.data.Dataset.from_generator(lambda: iter(examples),
                                        output_signature=signature)


def test_eval_pipeline_pads_the_last_batch():
  examples = [_example(50, 70, [(5, 5, 30, 30)], seed=1),
              _example(80, 60, [], seed=2),
              _example(40, 40, [(0, 0, 40, 40), (10, 10, 20, 20)], seed=3)]
  for i, ex in enumerate(examples):
    ex["image_id"] = np.int64(i + 1)
  batches = list(pipeline.numpy_batches(pipeline.make_pipeline(
      _generator_ds(examples), train=False, batch_dims=(2, 2),
      drop_remainder=False, seed=0, **SIZES)))
  assert len(batches) == 1
  batch = batches[0]
  assert batch["image"].shape == (2, 2, 256, 256, 3)
  np.testing.assert_array_equal(batch["image_id"], [[1, 2], [3, -1]])
  np.testing.assert_array_equal(batch["gt_valid"].sum(-1), [[1, 0], [2, 0]])
  assert np.all(batch["image"][1, 1] == 0)


def test_evaluation_input_without_mask_targets_is_the_same_otherwise():
  """``gt_masks=False`` (the evaluation's input: ``datasets.eval_iterator``)
  leaves out ``gt_masks`` and changes nothing else; masks of the wrong size,
  which the mask targets refuse, show that the masks are never read."""
  examples = [_example(50, 70, [(5, 5, 30, 30)], seed=1),
              _example(40, 40, [(0, 0, 40, 40), (10, 10, 20, 20)], seed=3)]
  kwargs = dict(train=False, batch_dims=(2,), drop_remainder=False, seed=0, **SIZES)
  full, = pipeline.numpy_batches(pipeline.make_pipeline(_generator_ds(examples), **kwargs))
  lean, = pipeline.numpy_batches(pipeline.make_pipeline(_generator_ds(examples),
                                                        gt_masks=False, **kwargs))
  assert set(full) - set(lean) == {"gt_masks"} and set(lean) < set(full)
  for k in lean:
    np.testing.assert_array_equal(lean[k], full[k], err_msg=k)
  broken = [dict(ex, objects=dict(ex["objects"], mask=np.ones(
      (len(ex["objects"]["label"]), 1, 1, 1), np.uint8))) for ex in examples]
  with pytest.raises(tf.errors.InvalidArgumentError):  # reading them fails
    list(pipeline.numpy_batches(pipeline.make_pipeline(_generator_ds(broken), **kwargs)))
  again, = pipeline.numpy_batches(pipeline.make_pipeline(_generator_ds(broken),
                                                         gt_masks=False, **kwargs))
  np.testing.assert_array_equal(again["gt_boxes"], full["gt_boxes"])


def test_training_draws_min_sizes_evaluation_uses_eval_min_size():
  examples = [_example(50 + 7 * i, 70, [(5, 5, 30, 30)], seed=i)
              for i in range(8)]
  spec = InputSpec(min_sizes=(96, 112, 128), max_size=256,
                   canvases=((256, 256),), eval_min_size=100)
  kwargs = dict(spec=spec, batch_dims=(4,), seed=0, max_instances=4,
                gt_mask_size=14)
  train = pipeline.make_pipeline(_generator_ds(examples), train=True,
                                 shuffle_buffer=1, flip_prob=0.0, **kwargs)
  drawn = []
  for _, batch in zip(range(4), pipeline.numpy_batches(train)):
    for (oh, ow), size in zip(batch["orig_size"], batch["image_size"]):
      picked = [m for m in spec.min_sizes
                if spec.resized_size(oh, ow, m) == tuple(size)]
      assert picked, (oh, ow, size)
      drawn.append(picked[0])
  assert len(set(drawn)) > 1
  evaluation = pipeline.make_pipeline(_generator_ds(examples), train=False,
                                      **kwargs)
  for batch in pipeline.numpy_batches(evaluation):
    for (oh, ow), size in zip(batch["orig_size"], batch["image_size"]):
      assert tuple(size) == spec.resized_size(oh, ow) == spec.resized_size(
          oh, ow, 100)


def _resume_stream(examples, spec, start=None, n=None, **kwargs):
  ds = pipeline.make_pipeline(
      _generator_ds(examples), spec=spec, train=True, seed=3, shuffle_buffer=4,
      max_instances=4, gt_mask_size=14, start=start, **kwargs)
  return [b for _, b in zip(range(n), pipeline.numpy_batches(ds))]


@pytest.mark.parametrize("buckets", [False, True], ids=["one_canvas", "buckets"])
def test_a_saved_position_resumes_the_stream_exactly(buckets):
  """Restarting at the position after any batch gives the uninterrupted
  stream's next batches, bit for bit, across epoch boundaries (5 examples
  per epoch, batches of 2) and with partly filled orientation windows."""
  # Landscape and portrait originals (aspect decides the bucket).
  examples = [_example(40 + 30 * (i % 3 == 0), 60 - 30 * (i % 3 == 0), [(5, 5, 30, 25)],
                       seed=i) for i in range(5)]
  for i, ex in enumerate(examples):
    ex["image_id"] = np.int64(i + 1)
  if buckets:
    spec = InputSpec(min_sizes=(48, 64), max_size=96, canvases=((64, 96), (96, 64)))
  else:
    spec = InputSpec(min_sizes=(64, 96), max_size=128, canvases=((128, 128),))
  full = _resume_stream(examples, spec, n=8, batch_dims=(2,))
  positions = [StreamPosition()]
  for batch in full:
    positions.append(positions[-1].after(batch["stream_index"]))
  # Each epoch holds every example once, in an order of its own.
  ids = np.concatenate([b["image_id"] for b in full])
  order = np.concatenate([b["stream_index"] for b in full])
  by_epoch = [ids[(order >= 5 * e) & (order < 5 * e + 5)] for e in range(2)]
  assert all(sorted(e) == [1, 2, 3, 4, 5] for e in by_epoch)
  assert not np.array_equal(by_epoch[0], by_epoch[1])
  if buckets:
    assert {b["image"].shape[1:3] for b in full} == {(64, 96), (96, 64)}
    assert any(p.pending for p in positions), "no partly filled window to resume"
  else:
    assert all(not p.pending and p.next == 2 * k for k, p in enumerate(positions))
  for k in range(1, 7):
    resumed = _resume_stream(examples, spec, start=positions[k], n=2, batch_dims=(2,))
    for a, b in zip(full[k:], resumed):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"after {k}: {key}")


def test_stream_position_refuses_a_stream_that_did_not_restart_exactly():
  p = StreamPosition().after([0, 2])  # 1 waits in the other window
  assert p == StreamPosition(3, (1,)) and p.first_to_read == 1
  assert p.keeps(1) and not p.keeps(2) and p.keeps(3)
  assert StreamPosition.from_json(p.to_json()) == p
  assert p.after([1, 4]) == StreamPosition(5, (3,))
  with pytest.raises(ValueError, match="did not restart"):
    p.after([2, 3])  # 2 was batched already
  with pytest.raises(ValueError, match="repeats"):
    p.after([3, 3])


def test_canvas_too_small_and_missing_fields_raise():
  # The spec refuses canvases that cannot hold its sizes...
  with pytest.raises(ValueError, match=r"config\.data\.canvas=\(128, 128\)"):
    InputSpec(min_sizes=128, max_size=256, canvases=((128, 128),))
  # ...and the pipeline guards a min_size beyond the spec's: 90 x 100 at
  # short side 96 is 86 x 96, landscape, taller than its canvas.
  buckets = InputSpec(min_sizes=64, max_size=96, canvases=((64, 96), (96, 64)))
  with pytest.raises(tf.errors.InvalidArgumentError, match="canvas"):
    _run(_example(90, 100, [(0, 0, 10, 10)]), spec=buckets, min_size=96)
  example = _example(64, 200, [(0, 0, 10, 10)])
  del example["objects"]["mask"]
  with pytest.raises(ValueError, match="objects/mask"):
    _run(example)


def test_encoded_input_matches_decoded(data_dir):
  def first(decode):
    ds = shapes.load_shapes("validation", data_dir, decode=decode, **TINY)
    batches = pipeline.make_pipeline(ds, train=False, batch_dims=(4,), seed=0,
                                     **SIZES)
    return next(pipeline.numpy_batches(batches))

  a, b = first(True), first(False)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_measure_throughput_counts_images():
  batch = {"image": np.zeros((2, 3, 8, 8, 3), np.float32)}
  ips = pipeline.measure_throughput(iter([batch] * 5), num_batches=4)
  assert ips > 0
