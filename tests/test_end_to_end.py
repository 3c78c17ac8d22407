"""The main job end to end on a tiny shapes dataset: TFDS build -> tf.data
-> `mrcnn-jax train` (2 steps, checkpoints) -> evaluation with pycocotools
-> metrics.json and sample PNGs; then `mrcnn-jax evaluate` on the workdir."""

import json
import os

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_datasets")

from mrcnn_jax import cli  # noqa: E402

KEYS = [f"{t}/{m}" for t in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]


def test_train_then_evaluate_cli(tmp_path, capsys):
  cfg = tmp_path / "tiny_shapes.py"
  cfg.write_text("from helpers import tiny_config\n\n"
                 "def get_config():\n"
                 f"  c = tiny_config()\n  c.data.data_dir = {str(tmp_path / 'tfds')!r}\n"
                 "  return c\n")
  wd = str(tmp_path / "wd")
  cli.main(["train", "--config", str(cfg), "--workdir", wd, "--config.total_steps=2",
            "--config.checkpoint_every=1"])
  with open(os.path.join(wd, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["step"] == 2
  assert set(KEYS) <= set(metrics)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["1", "2"]
  assert len([p for p in os.listdir(os.path.join(wd, "samples")) if p.endswith(".png")]) == 2
  cli.main(["evaluate", "--config", str(cfg), "--workdir", wd])
  assert "bbox/AP" in capsys.readouterr().out
  # a converted torchvision-layout checkpoint, evaluated directly (.pth and
  # converted directory)
  fixture = os.path.join(os.path.dirname(__file__), "data", "tiny_maskrcnn.pth")
  wd2 = str(tmp_path / "wd_pth")
  cli.main(["evaluate", "--config", str(cfg), "--checkpoint", fixture, "--workdir", wd2])
  with open(os.path.join(wd2, "metrics.json")) as f:
    assert set(KEYS) <= set(json.load(f))


def test_cli_errors(tmp_path, capsys):
  # (config errors in full: tests/test_cli_convert_predict.py)
  with pytest.raises(SystemExit):
    cli.main(["train", "--config", str(tmp_path / "nope.py")])
  assert "config file not found" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["train", "--workdir", str(tmp_path), "--config.not_a_key=3"])
  assert "config has no field 'not_a_key'" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    cli.main(["evaluate", "--workdir", str(tmp_path / "empty"),
              "--config.data.num_train=8", "--config.data.num_validation=4"])


def test_custom_coco_format_train_and_evaluate(tmp_path):
  """A user's own COCO-format data (polygons, RLE, crowd, grayscale, an empty
  image, non-contiguous category ids) through build, pipeline, one train
  step and COCO evaluation, with the class count taken from the json."""
  from test_coco_data import write_dataset
  json_path, images = write_dataset(str(tmp_path / "src"))
  cfg = tmp_path / "tiny_custom.py"
  cfg.write_text(
      "from helpers import tiny_config\n\n"
      "def get_config():\n"
      "  c = tiny_config()\n"
      "  d = c.data\n"
      "  d.name = 'coco_format'\n"
      f"  d.data_dir = {str(tmp_path / 'tfds')!r}\n"
      f"  d.train_json = d.val_json = {json_path!r}\n"
      f"  d.train_images = d.val_images = {images!r}\n"
      "  d.canvas = None\n"
      "  d.canvases = ((64, 96), (96, 64))\n"
      "  d.min_size = 64\n"
      "  d.max_size = 96\n"
      "  c.model.num_classes = 0\n"
      "  d.class_names = ()\n"
      "  return c\n")
  wd = str(tmp_path / "wd")
  cli.main(["train", "--config", str(cfg), "--workdir", wd, "--config.total_steps=1"])
  with open(os.path.join(wd, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["step"] == 1 and set(KEYS) <= set(metrics)
  with open(os.path.join(wd, "config.json")) as f:
    assert json.load(f)["model"]["num_classes"] == 0  # as given: not written back
  with open(os.path.join(wd, "dataset.json")) as f:
    assert json.load(f)["num_classes"] == 4  # background + 3 categories, from the json
