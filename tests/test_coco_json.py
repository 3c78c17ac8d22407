"""Tests for reading and checking COCO-format jsons (mrcnn_jax/data/coco_json.py),
which needs no TensorFlow (checked in a subprocess)."""

import copy
import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mrcnn_jax.data import coco_json

H, W = 30, 40


def _rect(x0, y0, x1, y1):
  return [x0, y0, x1, y0, x1, y1, x0, y1]


def _runs(mask):
  """Uncompressed COCO RLE counts of a bool mask (column-major)."""
  runs, value, n = [], False, 0
  for v in mask.reshape(-1, order="F"):
    if v != value:
      runs.append(n)
      value, n = v, 0
    n += 1
  return runs + [n]


def _compressed(mask):
  return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def _box_mask(y0, y1, x0, x1, h=H, w=W):
  m = np.zeros((h, w), bool)
  m[y0:y1, x0:x1] = True
  return m


def make_json():
  """Two images; polygons, uncompressed and compressed RLE, a crowd region,
  and one annotation of each kind that is skipped."""
  ann = lambda aid, iid, cat, bbox, seg, **kw: dict(
      id=aid, image_id=iid, category_id=cat, bbox=bbox, segmentation=seg, **kw)
  return {
      "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W},
                 {"id": 2, "file_name": "b.png", "height": H, "width": W}],
      "categories": [{"id": 9, "name": "nine"}, {"id": 4, "name": "four"}],
      "annotations": [
          ann(1, 1, 4, [2, 3, 10, 10], [_rect(2, 3, 12, 13), _rect(20, 3, 25, 8)]),
          ann(2, 1, 9, [0, 0, 5, 50], {"size": [H, W], "counts": _runs(_box_mask(0, 30, 0, 5))},
              iscrowd=1),
          ann(3, 2, 9, [10, 10, 5, 5], {"size": [H, W],
                                        "counts": _compressed(_box_mask(10, 15, 10, 15))},
              area=25.0),
          ann(4, 2, 5, [0, 0, 5, 5], [_rect(0, 0, 5, 5)]),  # unknown category
          ann(5, 3, 4, [0, 0, 5, 5], [_rect(0, 0, 5, 5)]),  # unknown image
          ann(6, 2, 4, [50, 0, 5, 5], [_rect(0, 0, 5, 5)]),  # box outside
          ann(7, 2, 4, [0, 0, 5, 5], [[0, 0, 5, 5]]),  # no valid polygon
      ],
  }


def _write(tmp_path, data, name="instances.json"):
  path = str(tmp_path / name)
  with open(path, "w") as f:
    json.dump(data, f)
  return path


def _read(tmp_path, data):
  path = _write(tmp_path, data)
  loaded = coco_json.load_json(path)
  cats = coco_json.categories(path, loaded)
  return path, coco_json.read_split(path, loaded, [cid for cid, _ in cats])


def test_read_split_objects_masks_and_counts(tmp_path, caplog):
  data = make_json()
  path, (images, stats) = _read(tmp_path, data)
  assert coco_json.categories(path, data) == [(4, "four"), (9, "nine")]
  assert [im.id for im in images] == [1, 2]
  one, two = images
  assert [(o.id, o.label, o.category_id, o.is_crowd) for o in one.objects] == [
      (1, 0, 4, False), (2, 1, 9, True)]
  assert [o.id for o in two.objects] == [3]
  assert two.objects[0].area == 25.0 and one.objects[0].area is None
  assert one.objects[1].box == (0.0, 0.0, 5.0, 30.0)  # clipped to the image
  gt = COCO(path)
  for image in images:
    for obj in image.objects:
      mask = coco_json.object_mask(obj, H, W)
      assert mask.shape == (H, W) and mask.dtype == np.uint8
      np.testing.assert_array_equal(mask, gt.annToMask(gt.anns[obj.id]))
  assert stats["num_images"] == 2 and stats["num_objects"] == 3
  assert stats["num_crowd"] == 1 and stats["num_annotations"] == 7
  assert stats["num_images_without_non_crowd_objects"] == 0
  assert stats["unknown_category_ids"] == [5]
  for key, ids in [("unknown_category", [4]), ("unknown_image", [5]),
                   ("empty_box", [6]), ("no_valid_segmentation", [7])]:
    assert stats[f"skipped_{key}"] == len(ids)
    assert stats[f"skipped_{key}_annotation_ids"] == ids
  assert stats["skipped_invalid_polygon"] == 1
  with caplog.at_level(logging.INFO, logger="mrcnn_jax.data.coco_json"):
    coco_json.log_skipped("train", stats)
  assert "skipped 1 annotations with unknown category ids: [5]" in caplog.text
  assert "2 images, 3 objects (1 crowd) from 7 annotations" in caplog.text


def _with_counts(counts, size=(H, W)):
  data = make_json()
  data["annotations"][2]["segmentation"] = {"size": list(size), "counts": counts}
  return data


BAD_COUNTS = {
    "list short": [10, 20],
    "list negative": [H * W + 5, -5],
    "list floats": [float(H * W)],
    "list bools": [True, H * W - 1],
    "string short": _compressed(_box_mask(0, H - 1, 0, 5, h=H - 1)),
    "string long": _compressed(_box_mask(0, H, 0, 5, w=W + 1)),
    "string bad characters": "\x01\x02zz",
    "string not ascii": "0é",
    "string ends mid-number": _compressed(_box_mask(0, H, 0, W))[:-1] + "o",
    "string empty": "",
    "neither": {"a": 1},
}


@pytest.mark.parametrize("counts", BAD_COUNTS.values(), ids=BAD_COUNTS.keys())
def test_malformed_rle_counts_raise_naming_json_and_annotation(tmp_path, counts):
  with pytest.raises(ValueError, match=r"instances\.json: annotation id 3: RLE 'counts' is "
                                       r"not a valid run-length encoding of 30 x 40"):
    _read(tmp_path, _with_counts(counts))


def test_valid_rle_counts_are_accepted_as_pycocotools_writes_them(tmp_path):
  mask = np.random.default_rng(0).random((H, W)) > 0.5
  cases = [(_runs(mask), mask), (_compressed(mask), mask),
           ([H * W], np.zeros((H, W), bool)), ([0, H * W], np.ones((H, W), bool))]
  for counts, expected in cases:
    _, (images, _) = _read(tmp_path, _with_counts(counts))
    obj = images[1].objects[0]
    assert isinstance(obj.rle["counts"], bytes)  # stored compressed
    np.testing.assert_array_equal(coco_json.object_mask(obj, H, W), expected)


def test_json_errors_name_the_json_and_the_record(tmp_path):
  with pytest.raises(FileNotFoundError, match="annotation json not found"):
    coco_json.load_json(str(tmp_path / "none.json"))
  (tmp_path / "bad.json").write_text("{")
  with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
    coco_json.load_json(str(tmp_path / "bad.json"))
  data = make_json()
  del data["categories"]
  with pytest.raises(ValueError, match="no top-level key 'categories'"):
    coco_json.load_json(_write(tmp_path, data))
  cases = [
      (lambda d: d["annotations"][3].pop("bbox"),
       r"annotations\[3\] \(id 4\) has no required key 'bbox'"),
      (lambda d: d["annotations"][1].update(id=1), "annotation id 1 appears more than once"),
      (lambda d: d["images"][0].update(height=0), r"images\[0\] \(id 1\) has 'height' = 0"),
      (lambda d: d["images"][1].update(id=2**31), r"images\[1\]\['id'\] = 2147483648"),
      (lambda d: d["annotations"][0].update(iscrowd=2), "annotation id 1: 'iscrowd'"),
      (lambda d: d["annotations"][2]["segmentation"].update(size=[H, W + 1]),
       r"annotation id 3: RLE 'size' \[30, 41\] differs"),
      (lambda d: d["annotations"][0].update(segmentation=[[0, 0, "x", 1, 2, 2]]),
       "annotation id 1: 'segmentation' must be a list of polygons"),
  ]
  for edit, message in cases:
    data = make_json()
    edit(data)
    with pytest.raises(ValueError, match=message):
      _read(tmp_path, data)


def test_check_image_files_names_the_missing(tmp_path):
  data = make_json()
  path, (images, _) = _read(tmp_path, data)
  folder = tmp_path / "images"
  with pytest.raises(FileNotFoundError, match="does not exist"):
    coco_json.check_image_files(path, str(folder), images)
  folder.mkdir()
  (folder / "a.jpg").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=r"1 image file\(s\) .* b\.png \(image id 2\)"):
    coco_json.check_image_files(path, str(folder), images)
  (folder / "b.png").write_bytes(b"")
  coco_json.check_image_files(path, str(folder), images)


def test_coco_source(tmp_path):
  source = coco_json.CocoSource(train_json="a.json", train_images="imgs")
  assert source.train_json == os.path.abspath("a.json") and not source.is_coco2017
  assert source.splits() == {"train": (os.path.abspath("a.json"), os.path.abspath("imgs"))}
  assert source == coco_json.CocoSource(train_json=os.path.abspath("a.json"),
                                        train_images="imgs")
  assert hash(source) == hash(coco_json.CocoSource(train_json="a.json", train_images="imgs"))
  with pytest.raises(ValueError, match="give both val_json and val_images"):
    coco_json.CocoSource(val_json="v.json")
  with pytest.raises(ValueError, match="not both"):
    coco_json.CocoSource(manual_dir="/data/coco", train_json="a.json", train_images="i")
  assert coco_json.CocoSource().is_coco2017 and coco_json.CocoSource().splits() == {}
  coco2017 = coco_json.CocoSource(manual_dir=tmp_path)
  assert coco2017.splits()["validation"] == (
      str(tmp_path / "annotations" / "instances_val2017.json"), str(tmp_path / "val2017"))
  with pytest.raises(FileNotFoundError, match="train2017"):
    coco2017.check_manual_dir()


def test_needs_no_tensorflow(tmp_path):
  """The module and everything above, in a fresh interpreter: TensorFlow and
  TFDS are never imported."""
  path = _write(tmp_path, make_json())
  script = textwrap.dedent(f"""
      import sys
      from mrcnn_jax.data import coco_json
      source = coco_json.CocoSource(train_json={path!r}, train_images={str(tmp_path)!r})
      js, _ = source.splits()["train"]
      data = coco_json.load_json(js)
      ids = [cid for cid, _ in coco_json.categories(js, data)]
      images, stats = coco_json.read_split(js, data, ids)
      coco_json.log_skipped("train", stats)
      masks = [coco_json.object_mask(o, im.height, im.width)
               for im in images for o in im.objects]
      assert len(masks) == 3 and stats["num_objects"] == 3
      loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                      ("tensorflow", "tensorflow_datasets", "jax", "flax"))
      print("heavy modules:", loaded)
      assert not loaded, loaded
      """)
  root = os.path.join(os.path.dirname(__file__), "..")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=root, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "heavy modules: []" in result.stdout


def test_inputs_are_not_modified(tmp_path):
  data = make_json()
  before = copy.deepcopy(data)
  _read(tmp_path, data)
  coco_json.categories("x.json", data)
  assert data == before


# ------------------------------------------------------------------------------
# The bad-input table of README ("Bad input"), json rows: each raises naming the
# json and the record, or is skipped and counted.
# ------------------------------------------------------------------------------


def _edit(**changes):
  """make_json() with `changes` applied: {"annotations.0.bbox": value, ...}."""
  data = make_json()
  for path, value in changes.items():
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
      node = node[int(p)] if p.isdigit() else node[p]
    node[int(leaf) if leaf.isdigit() else leaf] = value
  return data


RAISES = {
    "duplicate image id": (_edit(**{"images.1.id": 1}), "image id 1 appears more than once"),
    "NaN box": (_edit(**{"annotations.0.bbox": [2, float("nan"), 10, 10]}),
                r"annotation id 1: 'bbox' must be \[x, y, width, height\] \(4 finite"),
    "infinite box": (_edit(**{"annotations.0.bbox": [2, 3, float("inf"), 10]}), "4 finite"),
    "box of 3 numbers": (_edit(**{"annotations.0.bbox": [2, 3, 10]}), "4 finite"),
    # pycocotools hangs on a vertex at 1e8 and crashes the process at 1e9
    "polygon vertex far outside": (
        _edit(**{"annotations.0.segmentation": [[2, 3, 12, 3, 12, 1e9]]}),
        r"annotation id 1: polygon y coordinate 1000000000.0 lies more than one image size "
        r"outside the 30 x 40"),
    "image larger than PIL's limit": (
        _edit(**{"images.0.height": 2**20, "images.0.width": 2**20}),
        r"images\[0\] \(id 1\) is 1048576 x 1048576 .* decompression-bomb"),
    "annotation id beyond int64": (_edit(**{"annotations.0.id": 2**64}),
                                   r"annotations\[0\]\['id'\] must be a 64-bit integer"),
    "category id beyond int64": (_edit(**{"categories.0.id": 2**63}),
                                 r"categories\[0\]\['id'\] must be a 64-bit integer"),
    "missing 'segmentation'": (_edit(**{"annotations.4": {"id": 5, "image_id": 1,
                                                          "category_id": 4, "bbox": [0, 0, 1, 1]}}),
                               r"annotations\[4\] \(id 5\) has no required key 'segmentation'"),
}


@pytest.mark.parametrize("name", RAISES)
def test_bad_json_records_raise_naming_json_and_record(tmp_path, name):
  data, message = RAISES[name]
  with pytest.raises(ValueError, match=message) as info:
    _read(tmp_path, data)
  assert str(tmp_path / "instances.json") in str(info.value)


UNPARSABLE = {
    "truncated": (json.dumps(make_json())[:300], r"not valid JSON \(the file ends early: "
                                                 r"truncated\?\)"),
    "malformed": ('{"images": [}', "not valid JSON: Expecting value"),
    "zero bytes": ("", "not valid JSON"),
    "not utf-8": (b"\xff\xfe{}".decode("latin-1"), "not valid JSON"),
    "nested deeper than the parser goes": ("[" * 100000 + "]" * 100000,
                                           "not valid JSON: RecursionError"),
    "5000-digit integer": ('{"images": ' + "9" * 5000 + "}", "not valid JSON: ValueError"),
    "a list at the top": ("[]", "expected a JSON object at the top level, got list"),
    "'images' not a list": ('{"images": {}, "annotations": [], "categories": []}',
                            "'images' must be a list, got dict"),
}


@pytest.mark.parametrize("name", UNPARSABLE)
def test_unparsable_json_raises_naming_it(tmp_path, name):
  text, message = UNPARSABLE[name]
  path = tmp_path / "instances.json"
  path.write_bytes(text.encode("latin-1"))
  with pytest.raises(ValueError, match=message) as info:
    coco_json.load_json(str(path))
  assert str(path) in str(info.value)


def test_degenerate_boxes_and_crowd_only_images_are_counted(tmp_path, caplog):
  data = make_json()
  data["annotations"][0]["bbox"] = [2, 3, 0, 10]  # zero width
  data["annotations"][2]["bbox"] = [10, 10, 5, -5]  # negative height
  data["annotations"][1]["bbox"] = [-5, -5, 10, 10]  # partly outside: clipped, kept
  data["images"].append({"id": 4, "file_name": "c.jpg", "height": H, "width": W})
  data["annotations"].append(dict(id=8, image_id=4, category_id=9, bbox=[0, 0, 5, 5],
                                  segmentation=[_rect(0, 0, 5, 5)], iscrowd=1))
  _, (images, stats) = _read(tmp_path, data)
  assert stats["skipped_empty_box"] == 3  # the two above and annotation 6 (outside)
  assert stats["skipped_empty_box_annotation_ids"] == [1, 3, 6]
  by_id = {im.id: im for im in images}
  assert by_id[1].objects[0].box == (0.0, 0.0, 5.0, 5.0)
  # Image 1 keeps only a crowd region, image 4 has one, image 2 none left.
  assert [o.is_crowd for o in by_id[4].objects] == [True]
  assert stats["num_images_without_non_crowd_objects"] == 3
  with caplog.at_level(logging.WARNING, logger="mrcnn_jax.data.coco_json"):
    coco_json.log_skipped("train", stats)
  assert ("skipped 3 annotations whose box lies outside the image or has zero or negative "
          "width or height; annotation ids [1, 3, 6]") in caplog.text


def test_polygons_partly_outside_are_rasterised_as_pycocotools_does(tmp_path):
  """Vertices within one image size of the image are accepted as they are
  (no clipping): the mask is pycocotools' own, which evaluation uses."""
  poly = [-30.0, -20.0, 70.0, 5.0, 20.0, 55.0]
  _, (images, _) = _read(tmp_path, _edit(**{"annotations.0.segmentation": [poly]}))
  mask = coco_json.object_mask(images[0].objects[0], H, W)
  expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], H, W)))
  np.testing.assert_array_equal(mask, expected)
  assert 0 < mask.sum() < H * W
