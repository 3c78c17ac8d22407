"""Tests for COCO-format data (mrcnn_jax/data/coco.py) through the pipeline
(the json checks alone, without TensorFlow: test_coco_json.py).

A tiny COCO-format dataset is written on the fly: JPEG, PNG, grayscale and
RGBA images; polygons (one object with two), uncompressed and compressed RLE;
a crowd region; an image without annotations; category ids 3, 7, 12; a box
partly outside its image.
"""

import json
import logging
import os

import numpy as np
import pytest

# Accelerator machines often have JAX but no TensorFlow: skip there.
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_datasets")

from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from PIL import Image  # noqa: E402

from mrcnn_jax import coco_eval  # noqa: E402
from mrcnn_jax.data import coco, datasets, pipeline  # noqa: E402
from mrcnn_jax.input_spec import InputSpec, resized_size  # noqa: E402

CATEGORIES = [{"id": 12, "name": "lemon"}, {"id": 3, "name": "cherry"},
              {"id": 7, "name": "grape"}]  # out of order on purpose
LABEL_MAP = {1: 3, 2: 7, 3: 12}
NAMES = ["cherry", "grape", "lemon"]


def _rect(x0, y0, x1, y1):
  return [x0, y0, x1, y0, x1, y1, x0, y1]


def _rle(mask, compressed):
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  if compressed:
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
  runs, flat, value, n = [], mask.T.reshape(-1), 0, 0  # column-major
  for v in flat:
    if v != value:
      runs.append(n)
      value, n = v, 0
    n += 1
  runs.append(n)
  return {"size": list(mask.shape), "counts": [int(r) for r in runs]}


def _save(path, array, fmt, mode=None):
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def write_dataset(root):
  """A small COCO-format dataset under `root`; returns (json path, images)."""
  images_dir = os.path.join(root, "images")
  os.makedirs(images_dir, exist_ok=True)
  rng = np.random.default_rng(0)
  noise = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  images, anns = [], []

  def add_image(iid, name, h, w, fmt, mode=None):
    _save(os.path.join(images_dir, name), noise(h, w), fmt, mode)
    images.append({"id": iid, "file_name": name, "height": h, "width": w})

  def add(aid, iid, cat, bbox, seg, crowd=0):
    anns.append({"id": aid, "image_id": iid, "category_id": cat,
                 "bbox": [float(v) for v in bbox], "segmentation": seg,
                 "iscrowd": crowd, "area": 0.0})

  # 1: landscape JPEG 60 x 80.
  add_image(1, "a.jpg", 60, 80, "JPEG")
  add(101, 1, 3, [10, 5, 30, 25], [[10, 5, 40, 30, 10, 30]])
  add(102, 1, 7, [45, 5, 30, 50],  # one object, two polygons
      [_rect(45, 5, 60, 20), _rect(60, 35, 75, 55)])
  add(103, 1, 12, [50, 30, 31, 20],  # box 1 px past the right edge
      [_rect(50, 30, 81, 50)])
  # 2: portrait PNG 90 x 50: uncompressed RLE, compressed RLE, a crowd region.
  add_image(2, "b.png", 90, 50, "PNG")
  m = np.zeros((90, 50), bool)
  m[10:40, 5:30] = True
  m[20:25, 10:15] = False
  add(201, 2, 7, [5, 10, 25, 30], _rle(m, compressed=False))
  m = np.zeros((90, 50), bool)
  m[50:80, 20:45] = True
  add(202, 2, 12, [20, 50, 25, 30], _rle(m, compressed=True))
  m = np.zeros((90, 50), bool)
  m[0:10, 0:50] = True
  add(203, 2, 3, [0, 0, 50, 10], _rle(m, compressed=False), crowd=1)
  # 5: grayscale JPEG (square: landscape bucket).
  add_image(5, "gray.jpg", 64, 64, "JPEG", mode="L")
  add(501, 5, 3, [8, 8, 40, 40], [_rect(8, 8, 48, 48)])
  # 9: no annotations.
  add_image(9, "empty.png", 40, 70, "PNG")
  # 11: RGBA PNG, portrait.
  add_image(11, "rgba.png", 70, 40, "PNG", mode="RGBA")
  add(1101, 11, 12, [5, 10, 30, 40], [[5, 10, 35, 10, 20, 50]])
  for ann in anns:  # area as COCO defines it: of the mask
    h, w = next((im["height"], im["width"]) for im in images
                if im["id"] == ann["image_id"])
    seg = ann["segmentation"]
    rles = (mask_utils.frPyObjects(seg, h, w) if isinstance(seg, list)
            else [mask_utils.frPyObjects(seg, h, w)
                  if isinstance(seg["counts"], list) else seg])
    ann["area"] = float(mask_utils.area(mask_utils.merge(rles)))
  path = os.path.join(root, "instances.json")
  with open(path, "w") as f:
    json.dump({"images": images, "annotations": anns,
               "categories": CATEGORIES}, f)
  return path, images_dir


@pytest.fixture(scope="module")
def src(tmp_path_factory):
  root = tmp_path_factory.mktemp("coco_src")
  json_path, images_dir = write_dataset(root)
  paths = dict(train_json=json_path, train_images=images_dir,
               val_json=json_path, val_images=images_dir)
  source = coco.CocoSource(**paths)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = coco.coco_builder(data_dir, source)
  return {"data_dir": data_dir, "paths": paths, "source": source,
          "json": json_path, "builder": builder}


def _load(src, split="validation", **kwargs):
  return coco.load_coco(src["builder"], split, **kwargs)


def _by_id(ds):
  return {int(ex["image_id"]): ex for ex in ds.as_numpy_iterator()}


SIZES = dict(max_instances=4, gt_mask_size=14)
MAX_SIZE = 96


def _spec(min_sizes=64, canvases=((96, 96),)):
  return InputSpec(min_sizes=min_sizes, max_size=MAX_SIZE, canvases=canvases)


def test_builds_with_label_map_names_and_counts(src):
  builder = src["builder"]
  assert builder.builder_config.name.startswith("custom_")
  assert coco.coco_label_map(builder) == LABEL_MAP
  assert coco.coco_class_names(builder) == NAMES
  names_by_id = coco.coco_class_names(builder, label_space="coco_ids")
  assert len(names_by_id) == 12 and names_by_id[6] == "grape"
  assert names_by_id[0] == "N/A"
  stats = coco.coco_split_stats(builder, "validation")
  assert stats["num_images"] == 5 and stats["num_objects"] == 8
  assert stats["num_crowd"] == 1 and stats["num_images_without_objects"] == 1
  assert all(stats[k] == 0 for k in stats
             if k.startswith("skipped_") and not k.endswith("_ids"))
  assert coco.coco_gt_json(builder, "validation", src["source"]) == src["json"]
  assert coco.coco_gt_json(builder, "train") == src["json"]  # as prepared
  examples = _by_id(_load(src, decode=True))
  assert sorted(examples) == [1, 2, 5, 9, 11]
  for ex in examples.values():
    np.testing.assert_array_equal(
        [LABEL_MAP[int(l) + 1] for l in ex["objects"]["label"]],
        ex["objects"]["category_id"])
  by_category = _by_id(_load(src, label_space="coco_ids"))
  np.testing.assert_array_equal(by_category[2]["objects"]["label"] + 1,
                                by_category[2]["objects"]["category_id"])


def test_masks_boxes_and_images_match_the_json(src):
  gt = COCO(src["json"])
  examples = _by_id(_load(src, decode=True))
  for iid, ex in examples.items():
    info = gt.imgs[iid]
    h, w = info["height"], info["width"]
    assert ex["image"].shape == (h, w, 3)  # grayscale and RGBA -> RGB
    objects = ex["objects"]
    assert list(objects["id"]) == [a["id"] for a in gt.imgToAnns[iid]]
    for k, aid in enumerate(objects["id"]):
      ann = gt.anns[int(aid)]
      expected = gt.annToMask(ann).astype(bool)
      np.testing.assert_array_equal(objects["mask"][k, ..., 0] > 0, expected,
                                    err_msg=f"annotation {aid}")
      x, y, bw, bh = ann["bbox"]
      np.testing.assert_allclose(
          objects["bbox"][k],
          [y / h, x / w, min(y + bh, h) / h, min(x + bw, w) / w], atol=1e-6)
      assert objects["is_crowd"][k] == bool(ann["iscrowd"])
      assert objects["area"][k] == pytest.approx(ann["area"])
  gray = examples[5]["image"].astype(int)
  assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 1
  # The pipeline's own decode of the stored bytes gives 3 channels too.
  raw = _by_id(_load(src))
  for iid in (5, 11):
    decoded = pipeline._decode_image(raw[iid]["image"]).numpy()
    np.testing.assert_array_equal(decoded, examples[iid]["image"])


def _eval_batches(src, min_sizes=64):
  ds = pipeline.make_pipeline(_load(src), spec=_spec(min_sizes), train=False,
                              batch_dims=(2,), drop_remainder=False, seed=0,
                              **SIZES)
  out = {}
  for batch in pipeline.numpy_batches(ds):
    for i in range(2):
      if batch["image_id"][i] >= 0:
        out[int(batch["image_id"][i])] = {k: v[i] for k, v in batch.items()}
  return out


def test_crowd_is_excluded_and_counted_empty_image_is_all_invalid(src):
  out = _eval_batches(src)
  assert sorted(out) == [1, 2, 5, 9, 11]
  two = out[2]
  assert two["num_crowd"] == 1 and two["num_invalid"] == 0
  np.testing.assert_array_equal(two["gt_valid"], [True, True, False, False])
  np.testing.assert_array_equal(two["gt_labels"][:2], [2, 3])  # not cherry
  empty = out[9]
  assert not empty["gt_valid"].any() and empty["num_crowd"] == 0
  assert np.all(empty["gt_boxes"] == 0) and np.all(empty["gt_masks"] == 0)
  assert out[1]["num_crowd"] == 0 and out[1]["gt_valid"].sum() == 3
  # The box partly outside was clipped to the image (80 px wide).
  ratio = out[1]["image_size"][1] / 80
  assert out[1]["gt_boxes"][2, 2] == pytest.approx(80 * ratio, abs=1e-3)


def test_ground_truth_as_predictions_gives_ap_100(src):
  """The whole data path is exact: boxes from the pipeline mapped back to the
  original image, masks decoded by the pipeline, against the original json."""
  out = _eval_batches(src)
  raw = _by_id(_load(src))
  results = []
  for iid, ex in out.items():
    valid = ex["gt_valid"]
    ratio = ex["orig_size"] / ex["image_size"]  # (ry, rx), exact inverse
    boxes = ex["gt_boxes"][valid] * np.array([ratio[1], ratio[0]] * 2)
    objects = raw[iid]["objects"]
    keep = np.flatnonzero(~objects["is_crowd"])
    h, w = (int(v) for v in ex["orig_size"])
    masks = pipeline._gather_masks(objects["mask"], keep, h, w).numpy()
    assert len(keep) == valid.sum()
    results += coco_eval.detections_to_coco(
        iid, boxes, np.ones(len(boxes)), ex["gt_labels"][valid], masks,
        label_to_category_id=coco.coco_label_map(src["builder"]))
  metrics = coco_eval.evaluate_coco(src["json"], results, print_fn=None)
  assert metrics["bbox/AP"] == pytest.approx(100.0)
  assert metrics["segm/AP"] == pytest.approx(100.0)


CANVASES = ((64, 96), (96, 64))


def test_orientation_buckets_group_batches_by_canvas(src):
  def check(batch):
    image = batch["image"]
    assert image.shape[:2] == (1, 2) and image.shape[-1] == 3
    canvas = image.shape[2:4]
    assert canvas in CANVASES
    for key, value in batch.items():
      assert value.shape[:2] == (1, 2), key
    real = batch["image_id"] >= 0
    h, w = batch["orig_size"][real].T
    if canvas == CANVASES[0]:
      assert np.all(w >= h)
    else:
      assert np.all(w < h)
    ih, iw = batch["image_size"][real].T
    assert np.all(ih <= canvas[0]) and np.all(iw <= canvas[1])
    assert batch["gt_masks"].shape[2:] == (4, 14, 14)

  train = pipeline.make_pipeline(
      _load(src, split="train"), spec=_spec(canvases=CANVASES), train=True,
      batch_dims=(1, 2), seed=0, shuffle_buffer=8, **SIZES)
  seen = set()
  for _, batch in zip(range(6), pipeline.numpy_batches(train)):
    check(batch)
    seen.add(batch["image"].shape[2:4])
  assert seen == set(CANVASES)
  evaluation = pipeline.make_pipeline(
      _load(src), spec=_spec(canvases=CANVASES), train=False,
      batch_dims=(1, 2), drop_remainder=False, seed=0, **SIZES)
  ids = []
  for batch in pipeline.numpy_batches(evaluation):
    check(batch)
    ids += [int(i) for i in batch["image_id"].reshape(-1)]
  # 3 landscape (1, 5, 9), 2 portrait (2, 11): one padded batch.
  assert sorted(i for i in ids if i >= 0) == [1, 2, 5, 9, 11]
  assert ids.count(-1) == 1
  with pytest.raises(ValueError, match="cannot hold"):
    _spec(canvases=((64, 64), (96, 64)))


def test_multi_scale_draws_sizes_from_the_list_per_seed(src):
  sizes = (40, 48, 56, 64)

  def scales(seed):
    ds = pipeline.make_pipeline(
        _load(src, split="train"), spec=_spec(sizes), train=True,
        batch_dims=(2,), seed=seed, flip_prob=0.0, shuffle_buffer=1, **SIZES)
    out = []
    for _, batch in zip(range(8), pipeline.numpy_batches(ds)):
      for (oh, ow), got in zip(batch["orig_size"], batch["image_size"]):
        picked = [s for s in sizes
                  if resized_size(oh, ow, s, MAX_SIZE) == tuple(got)]
        assert picked, (oh, ow, got)
        out.append(picked[0])
    return out

  a, b, c = scales(0), scales(0), scales(1)
  assert a == b and a != c
  assert len(set(a)) > 1
  # Evaluation takes the last size (torchvision's rule): 64 here.
  for ex in _eval_batches(src, min_sizes=sizes).values():
    oh, ow = ex["orig_size"]
    np.testing.assert_array_equal(
        ex["image_size"], resized_size(oh, ow, 64, MAX_SIZE))


def test_datasets_routes_coco_format_configs(src, monkeypatch):
  import ml_collections
  made = []
  coco_builder = coco.coco_builder
  monkeypatch.setattr(coco, "coco_builder",
                      lambda *a, **k: made.append(a) or coco_builder(*a, **k))
  datasets._prepared_coco_builder.cache_clear()
  config = ml_collections.ConfigDict()
  config.seed = 0
  d = config.data = ml_collections.ConfigDict()
  d.name = "coco_format"
  d.data_dir = src["data_dir"]
  for k, v in src["paths"].items():
    setattr(d, k, v)
  d.canvases = CANVASES
  d.min_size = (48, 64)
  d.max_size = 96
  d.max_instances = 4
  d.gt_mask_size = 14
  d.flip_prob = 0.5
  d.shuffle_buffer = 8
  info = datasets.dataset_info(config)
  assert info.class_names == ["background"] + NAMES and info.num_classes == 4
  assert info.label_to_category_id == LABEL_MAP
  assert datasets.class_names(config) == ["background"] + NAMES
  assert datasets.label_to_category_id(config) == LABEL_MAP
  assert datasets.eval_coco_gt(config) == src["json"]
  batch = next(datasets.train_iterator(config, (1, 2)))
  assert batch["image"].shape[2:4] in CANVASES
  ids = [i for b in datasets.eval_iterator(config, (2,))
         for i in b["image_id"] if i >= 0]
  assert sorted(ids) == [1, 2, 5, 9, 11]
  assert len(made) == 1  # one builder for all of the above
  d.label_space = "coco_ids"  # labels are the category ids
  info = datasets.dataset_info(config)
  assert info.label_to_category_id is None
  assert datasets.label_to_category_id(config) == {i: i for i in range(1, 13)}
  names = info.class_names
  assert len(names) == 13 and names[7] == "grape" and names[1] == "N/A"
  assert datasets.class_names(config) == names
  d.class_names = tuple(f"c{i}" for i in range(14))  # overrides, may be longer
  assert datasets.dataset_info(config).class_names == list(d.class_names)
  assert datasets.class_names(config) == list(d.class_names)
  # (with coco_ids and names given the dataset is not opened at all: the
  # names are the model's label space, e.g. torchvision's 91 slots)
  d.label_space = "contiguous"
  d.class_names = ("background", "a")
  with pytest.raises(ValueError, match="class_names has 2 names"):
    datasets.dataset_info(config)


# ------------------------------------------------------------------------------
# Bad input: each case raises a clear error or is skipped and counted.
# ------------------------------------------------------------------------------


def _broken(tmp_path, edit_json=None, edit_files=None):
  """Writes the dataset, applies the edits, builds (train split only)."""
  json_path, images_dir = write_dataset(tmp_path / "src")
  if edit_json:
    with open(json_path) as f:
      data = json.load(f)
    edit_json(data)
    with open(json_path, "w") as f:
      json.dump(data, f)
  if edit_files:
    edit_files(images_dir)
  return coco.coco_builder(str(tmp_path / "tfds"), coco.CocoSource(
      train_json=json_path, train_images=images_dir))


def test_missing_image_file_raises_naming_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"b\.png \(image id 2\)"):
    _broken(tmp_path, edit_files=lambda d: os.remove(os.path.join(d, "b.png")))


def test_corrupt_jpeg_raises_naming_it(tmp_path):
  def truncate(images_dir):
    path = os.path.join(images_dir, "a.jpg")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])

  with pytest.raises(ValueError, match=r"a\.jpg \(image id 1\) is corrupt"):
    _broken(tmp_path, edit_files=truncate)


def test_json_missing_a_key_raises_naming_json_record_and_key(tmp_path):
  def drop_bbox(data):
    del data["annotations"][3]["bbox"]

  with pytest.raises(ValueError, match=r"instances\.json: annotations\[3\] "
                                       r"\(id 201\) has no required key 'bbox'"):
    _broken(tmp_path, edit_json=drop_bbox)


def test_malformed_rle_raises_naming_the_annotation(tmp_path):
  def bad_counts(data):
    data["annotations"][3]["segmentation"]["counts"] = [10, 20]

  with pytest.raises(ValueError, match=r"annotation id 201: RLE 'counts'"):
    _broken(tmp_path, edit_json=bad_counts)


def test_unknown_category_and_bad_polygons_are_skipped_and_counted(
    tmp_path, caplog):
  def edit(data):
    data["annotations"][0]["category_id"] = 99  # annotation 101
    data["annotations"][4]["category_id"] = 98  # annotation 202
    data["annotations"][1]["segmentation"][0] = [45, 5, 60, 20]  # 2 points
    data["annotations"][2]["segmentation"] = [[50, 30, 81]]  # nothing left
    data["annotations"][-1]["iscrowd"] = 1  # image 11: crowd only

  with caplog.at_level(logging.WARNING, logger="mrcnn_jax.data.coco_json"):
    builder = _broken(tmp_path, edit_json=edit)
  assert ("skipped 2 annotations with unknown category ids: [98, 99]"
          in caplog.text)
  assert "skipped 1 annotations without a valid polygon" in caplog.text
  stats = coco.coco_split_stats(builder, "train")
  assert stats["skipped_unknown_category"] == 2
  assert stats["unknown_category_ids"] == [98, 99]
  assert stats["skipped_unknown_category_annotation_ids"] == [101, 202]
  assert stats["skipped_invalid_polygon"] == 2
  assert stats["skipped_no_valid_segmentation_annotation_ids"] == [103]
  examples = _by_id(coco.load_coco(builder, "train", decode=True))
  assert list(examples[1]["objects"]["id"]) == [102]
  # Annotation 102 kept its valid polygon only.
  mask = examples[1]["objects"]["mask"][0, ..., 0] > 0
  expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(
      [_rect(60, 35, 75, 55)], 60, 80))).astype(bool)
  np.testing.assert_array_equal(mask, expected)
  # Images without a non-crowd object (9: none, 11: crowd only) are counted,
  # kept for evaluation and left out of training when asked (the default of
  # config.data.skip_empty_train), with a log line.
  assert stats["num_images_without_non_crowd_objects"] == 2
  assert sorted(examples) == [1, 2, 5, 9, 11]
  with caplog.at_level(logging.INFO, logger="mrcnn_jax.data.coco"):
    kept = _by_id(coco.load_coco(builder, "train", skip_empty=True))
  assert sorted(kept) == [1, 2, 5]
  assert "skipping 2 images without a non-crowd object" in caplog.text


def test_coco2017_manual_dir_layout(tmp_path):
  """The COCO 2017 layout (train2017/, val2017/, annotations/instances_*.json)
  read from a manual directory, through datasets.py's "coco" route."""
  import shutil
  import ml_collections
  json_path, images_dir = write_dataset(str(tmp_path / "src"))
  root = tmp_path / "coco"
  (root / "annotations").mkdir(parents=True)
  for split in ("train2017", "val2017"):
    shutil.copytree(images_dir, root / split)
    shutil.copy(json_path, root / "annotations" / f"instances_{split}.json")
  config = ml_collections.ConfigDict()
  config.seed = 0
  d = config.data = ml_collections.ConfigDict()
  d.name = "coco"
  d.data_dir = str(tmp_path / "tfds")
  d.manual_dir = str(root)
  d.canvases = CANVASES
  d.min_size = 64
  d.max_size = 96
  d.max_instances = 4
  d.gt_mask_size = 14
  d.flip_prob = 0.0
  d.shuffle_buffer = 4
  assert datasets.label_to_category_id(config) == LABEL_MAP
  assert datasets.class_names(config) == ["background"] + NAMES
  assert datasets.eval_coco_gt(config) == str(root / "annotations" / "instances_val2017.json")
  ids = sorted(int(i) for b in datasets.eval_iterator(config, (2,)) for i in b["image_id"]
               if i >= 0)
  assert ids == [1, 2, 5, 9, 11]
  with pytest.raises(FileNotFoundError, match="train2017"):
    shutil.rmtree(root / "train2017")
    coco.coco_builder(str(tmp_path / "tfds2"), coco.CocoSource(manual_dir=str(root)))
