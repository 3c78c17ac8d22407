"""Tests for the synthetic shapes dataset (mrcnn_jax/data/shapes.py)."""

import json

import numpy as np
import pytest

# Accelerator machines often have JAX but no TensorFlow: skip there.
pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_datasets")

from mrcnn_jax.data import shapes  # pylint: disable=g-import-not-at-top

TINY = dict(num_train=8, num_validation=4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  shapes.shapes_builder(path, **TINY)
  return path


def _examples(data_dir, split):
  ds = shapes.load_shapes(split, data_dir, **TINY)
  return sorted(ds.as_numpy_iterator(), key=lambda e: e["image_id"])


def test_draw_example_is_deterministic_and_well_formed():
  occluded = 0
  for index in range(40):
    a = shapes.draw_example(shapes.example_rng(0, "train", index))
    b = shapes.draw_example(shapes.example_rng(0, "train", index))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["masks"], b["masks"])
    h, w, c = a["image"].shape
    assert 128 <= h <= 256 and 128 <= w <= 256 and c == 3
    assert a["image"].dtype == np.uint8
    n = len(a["labels"])
    assert 1 <= n <= 6 and a["masks"].shape == (n, h, w)
    assert set(a["labels"].tolist()) <= {0, 1, 2}
    # Occlusion leaves disjoint visible parts, each above the minimum area.
    assert a["masks"].sum(axis=0).max() <= 1
    assert a["masks"].sum(axis=(1, 2)).min() >= 30
    occluded += a["num_occluded"]
  other = shapes.draw_example(shapes.example_rng(0, "validation", 0))
  first = shapes.draw_example(shapes.example_rng(0, "train", 0))
  assert other["image"].shape != first["image"].shape or not np.array_equal(
      other["image"], first["image"])
  # Some objects do get hidden, and they are counted, not silently lost.
  assert occluded > 0


def test_examples_drawn_on_threads_equal_those_drawn_in_order():
  """The builder's examples come from ``synthetic.generate`` (one thread per
  core on a prepared split): in index order, equal to drawing each here."""
  from mrcnn_jax.data import synthetic
  one = list(synthetic.shapes_examples(0, "train", 12, threads=1))
  many = list(synthetic.shapes_examples(0, "train", 12, threads=3, min_parallel=0))
  assert [e["image_id"] for e in many] == list(range(1, 13))
  assert many == one
  ex = shapes.draw_example(shapes.example_rng(0, "train", 5))
  assert one[5]["image"] == shapes.png_bytes(ex["image"])
  assert [o["label"] for o in one[5]["objects"]] == ex["labels"].tolist()
  # Errors in a worker reach the caller.
  def boom(i):
    if i == 7:
      raise ValueError("bad example 7")
    return i
  with pytest.raises(ValueError, match="bad example 7"):
    list(synthetic.generate(boom, 20, threads=2, min_parallel=0))


def test_config_names_and_validation():
  assert shapes.shapes_config().name == "default"
  assert shapes.shapes_config(8, 4, 3).name == "train8_val4_seed3"
  with pytest.raises(ValueError, match="num_train"):
    shapes.shapes_config(num_train=-1)


def test_prepared_dataset_is_deterministic(data_dir, tmp_path):
  again = tmp_path / "again"
  first = _examples(data_dir, "train")
  second = _examples(again, "train")
  assert len(first) == 8 and len(second) == 8
  for a, b in zip(first, second):
    assert a["image_id"] == b["image_id"]
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["objects"]["mask"], b["objects"]["mask"])
    np.testing.assert_array_equal(a["objects"]["bbox"], b["objects"]["bbox"])
    np.testing.assert_array_equal(a["objects"]["label"],
                                  b["objects"]["label"])
  val = _examples(data_dir, "validation")
  assert len(val) == 4
  assert [e["image_id"] for e in val] == [1, 2, 3, 4]
  assert not np.array_equal(val[0]["objects"]["bbox"],
                            first[0]["objects"]["bbox"])


def test_masks_boxes_and_areas_agree(data_dir):
  for ex in _examples(data_dir, "train") + _examples(data_dir, "validation"):
    image = ex["image"]
    h, w = image.shape[:2]
    objects = ex["objects"]
    masks = objects["mask"][..., 0]
    n = len(objects["label"])
    assert n >= 1 and masks.shape == (n, h, w)
    assert set(np.unique(masks).tolist()) <= {0, 1}
    assert masks.sum(axis=0).max() <= 1  # occlusion -> disjoint
    for mask, bbox, area in zip(masks, objects["bbox"], objects["area"]):
      assert mask.sum() == area >= 30
      rows = np.flatnonzero(mask.any(axis=1))
      cols = np.flatnonzero(mask.any(axis=0))
      tight = np.array([rows[0] / h, cols[0] / w,
                        (rows[-1] + 1) / h, (cols[-1] + 1) / w])
      np.testing.assert_allclose(bbox, tight, atol=1e-6)


def test_coco_gt_loads_into_pycocotools(data_dir, tmp_path):
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top

  gt = shapes.shapes_coco_gt(data_dir, "validation", **TINY)
  path = shapes.write_coco_gt(tmp_path / "gt" / "val.json", data_dir,
                              "validation", **TINY)
  with open(path) as f:
    assert json.load(f) == gt
  coco = COCO(path)
  assert sorted(coco.getImgIds()) == [1, 2, 3, 4]
  assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(
      shapes.CLASS_NAMES)
  examples = {int(e["image_id"]): e for e in _examples(data_dir, "validation")}
  for image_id, ex in examples.items():
    img = coco.loadImgs(image_id)[0]
    assert (img["height"], img["width"]) == ex["image"].shape[:2]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
    assert len(anns) == len(ex["objects"]["label"])
    for ann, mask, label in zip(anns, ex["objects"]["mask"][..., 0],
                                ex["objects"]["label"]):
      assert ann["category_id"] == label + 1 and ann["iscrowd"] == 0
      assert isinstance(ann["segmentation"]["counts"], str)
      np.testing.assert_array_equal(coco.annToMask(ann), mask)
      x, y, bw, bh = ann["bbox"]
      assert mask[int(y):int(y + bh), int(x):int(x + bw)].sum() == ann["area"]


NO_DEPRECATION_SCRIPT = """
import logging, sys, warnings

messages = []


class Keep(logging.Handler):

  def emit(self, record):
    messages.append(f"{record.name}: {record.getMessage()}")


logging.getLogger().addHandler(Keep(logging.WARNING))  # absl and tensorflow
warnings.simplefilter("always")
warnings.showwarning = lambda m, c, f, l, *a: messages.append(f"{c.__name__}: {m}")

import ml_collections
from mrcnn_jax.data import datasets, shapes

config = ml_collections.ConfigDict()
config.seed = 0
d = config.data = ml_collections.ConfigDict()
d.name = "shapes"
d.data_dir = sys.argv[1]
d.num_train, d.num_validation, d.dataset_seed = 4, 2, 0
d.canvas = (128, 128)
d.min_size, d.max_size = 96, 128
d.max_instances, d.gt_mask_size = 4, 14
d.flip_prob, d.shuffle_buffer = 0.5, 4
assert datasets.dataset_info(config).num_classes == 4
next(datasets.train_iterator(config, (2,)))
list(datasets.eval_iterator(config, (2,)))
datasets.eval_coco_gt(config)
for decode in (False, True):
  next(shapes.load_shapes("train", d.data_dir, num_train=4, num_validation=2,
                          decode=decode).as_numpy_iterator())
found = [m for m in messages if "deprecat" in m.lower()]
print("FOUND", found)

# Control: TFDS's own SkipDecoding of the masks logs the warnings caught here.
import tensorflow_datasets as tfds
ds = shapes.shapes_builder(d.data_dir, num_train=4, num_validation=2).as_dataset(
    split="train", decoders={"objects": {"mask": tfds.decode.SkipDecoding()}})
next(ds.as_numpy_iterator())
print("CONTROL", [m for m in messages if "deprecat" in m.lower()])
"""


def test_loading_logs_no_deprecation_warnings(tmp_path):
  """Building, loading (encoded and decoded) and iterating shapes through
  datasets.py logs no TF / TFDS deprecation warning (a fresh interpreter:
  each is logged only the first time)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  result = subprocess.run(
      [sys.executable, "-c", NO_DEPRECATION_SCRIPT, str(tmp_path)],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert "FOUND []" in lines, result.stdout
  control = next(l for l in lines if l.startswith("CONTROL"))
  assert "TensorInfo.dtype" in control and "map_fn_v2" in control, control


def test_dataset_info_of_shapes(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mrcnn_jax.data import datasets  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict()
  config.data.name = "shapes"
  config.data.data_dir = str(tmp_path / "tfds")
  info = datasets.dataset_info(config)
  assert info.class_names == ["background", "square", "circle", "triangle"]
  assert info.num_classes == 4 and info.label_space == "contiguous"
  assert info.label_to_category_id == {1: 1, 2: 2, 3: 3}
  assert not (tmp_path / "tfds").exists()  # nothing prepared for these facts
  config.data.label_space = "coco_ids"
  config.data.class_names = ("bg", "a", "b", "c")
  info = datasets.dataset_info(config)
  assert info.label_to_category_id is None and info.class_names == ["bg", "a", "b", "c"]
  assert datasets.class_names(config) == ["bg", "a", "b", "c"]
  assert datasets.label_to_category_id(config) == {1: 1, 2: 2, 3: 3}
  config.data.label_space = "ids"
  with pytest.raises(ValueError, match="label_space must be one of"):
    datasets.dataset_info(config)
