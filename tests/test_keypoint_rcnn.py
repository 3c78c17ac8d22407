"""Keypoint R-CNN beyond the ops: keypoints of a COCO-format json through
the TFDS builder and the pipeline (resize, flip with the left/right swap),
and the synthetic figures experiment end to end through the CLI (train,
evaluate with pycocotools' keypoints iouType, predict with skeleton
overlays)."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_datasets")

from mrcnn_jax import cli  # noqa: E402
from mrcnn_jax.data import coco_json  # noqa: E402

NAMES = ["nose", "left_eye", "right_eye"]


def keypoint_json(tmp_path):
  from test_coco_data import write_dataset
  path, images = write_dataset(str(tmp_path / "src"))
  with open(path) as f:
    data = json.load(f)
  for cat in data["categories"]:
    cat["keypoints"], cat["skeleton"] = NAMES, [[1, 2], [1, 3]]
  for ann in data["annotations"]:
    if ann["id"] == 101:  # image 1 (80 x 60), box [10, 5, 40, 30]
      ann["keypoints"], ann["num_keypoints"] = [20, 10, 2, 15, 8, 1, 0, 0, 0], 2
  with open(path, "w") as f:
    json.dump(data, f)
  return path, images, data


def test_coco_json_keypoints_through_builder_and_flip(tmp_path):
  import tensorflow as tf
  from mrcnn_jax.data import coco, pipeline
  from mrcnn_jax.input_spec import InputSpec
  path, images, data = keypoint_json(tmp_path)
  assert coco_json.keypoint_categories(path, data) == (NAMES, [[1, 2], [1, 3]])
  bad = json.loads(json.dumps(data))
  bad["annotations"][0]["keypoints"] = [1, 2, 3]
  with pytest.raises(ValueError, match="annotation id 101: 'keypoints' must be 9"):
    coco_json.read_split(path, bad, [3, 7, 12], num_keypoints=3)

  source = coco_json.CocoSource(train_json=path, train_images=images)
  builder = coco.coco_builder(str(tmp_path / "tfds"), source)
  assert coco.coco_keypoint_info(builder)["keypoint_names"] == tuple(NAMES)
  ex = next(ex for ex in coco.load_coco(builder, "train") if int(ex["image_id"]) == 1)
  kp = ex["objects"]["keypoints"].numpy()
  assert kp.shape == (3, 9)
  np.testing.assert_array_equal(kp[0], [20, 10, 2, 15, 8, 1, 0, 0, 0])
  np.testing.assert_array_equal(kp[1:], 0)  # annotations without keypoints

  spec = InputSpec(min_sizes=(120,), max_size=160, canvases=((128, 160), (160, 128)))
  flip_map = (0, 2, 1)
  for flip in (False, True):
    out = pipeline.preprocess_example(ex, spec=spec, flip=tf.constant(flip), max_instances=4,
                                      gt_mask_size=8, num_keypoints=3,
                                      keypoint_flip_map=flip_map)
    got = out["gt_keypoints"].numpy()[0]  # 60 x 80 -> 120 x 160: scale 2
    if not flip:
      np.testing.assert_allclose(got, [[40, 20, 2], [30, 16, 1], [0, 0, 0]])
    else:  # x -> 160 - x, left and right eye swapped, unlabelled stays 0
      np.testing.assert_allclose(got, [[120, 20, 2], [0, 0, 0], [130, 16, 1]])


def test_figures_train_evaluate_predict_cli(tmp_path):
  cfg = tmp_path / "tiny_figures.py"
  cfg.write_text(
      "from helpers import tiny_config\n"
      "import keypoints_synthetic\n\n"
      "def get_config():\n"
      "  c = tiny_config()\n"
      "  full = keypoints_synthetic.get_config()\n"
      "  c.model.num_classes, c.model.mask_on, c.model.keypoint_on = 2, False, True\n"
      "  k = c.model.roi_heads.keypoint\n"
      "  k.num_keypoints, k.conv_dims, k.rois_per_image = 13, (8,), 4\n"
      "  c.data.name, c.data.class_names = 'figures', full.data.class_names\n"
      f"  c.data.data_dir = {str(tmp_path / 'tfds')!r}\n"
      "  c.loss_weights.loss_keypoint = 1.0\n"
      "  return c\n")
  wd = str(tmp_path / "wd")
  cli.main(["train", "--config", str(cfg), "--workdir", wd, "--config.total_steps=2"])
  with open(os.path.join(wd, "metrics.json")) as f:
    metrics = json.load(f)
  keys = [f"keypoints/{m}" for m in ("AP", "AP50", "AP75", "APm", "APl")]
  assert set(keys) <= set(metrics) and "bbox/AP" in metrics and "segm/AP" not in metrics
  assert len([p for p in os.listdir(os.path.join(wd, "samples")) if p.endswith(".png")]) == 2

  from mrcnn_jax.data import figures
  from mrcnn_jax.visualize import save_png
  ex = figures.draw_example(figures.example_rng(0, "validation", 0))
  save_png(str(tmp_path / "photo.png"), ex["image"])
  out = str(tmp_path / "pred")
  cli.main(["predict", "--config", str(cfg), "--workdir", wd, "--output", out,
            str(tmp_path / "photo.png"), "--draw-threshold", "0"])
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  assert results and all(len(r["keypoints"]) == 39 for r in results)
  assert os.path.isfile(os.path.join(out, "photo.png"))
