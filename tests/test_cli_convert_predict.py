"""`mrcnn-jax convert` on a torchvision-layout .pth (made by
scripts/make_tiny_checkpoint.py) and `mrcnn-jax predict` on image files,
including a grayscale image and a corrupt file. No TensorFlow needed."""

import json
import os

import jax
import numpy as np
from PIL import Image

from mrcnn_jax import checkpoints, cli, experiment
from mrcnn_jax.model import variables_template
from mrcnn_jax.torch_io import load_torch_state_dict
from mrcnn_jax.weights import convert_state_dict

from helpers import tiny_config

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "tiny_maskrcnn.pth")


def write_config(tmp_path):
  cfg = tmp_path / "tiny.py"
  cfg.write_text("from helpers import tiny_config\n\ndef get_config():\n  return tiny_config()\n")
  return str(cfg)


def test_convert_then_predict(tmp_path, capsys):
  cfg = write_config(tmp_path)
  out = str(tmp_path / "converted")
  cli.main(["convert", "--checkpoint", FIXTURE, "--output", out, "--config", cfg])
  template = variables_template(experiment.build_model(tiny_config()))
  loaded = checkpoints.load_variables(out, template)
  direct = convert_state_dict(load_torch_state_dict(FIXTURE), template)
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(direct)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert os.path.isfile(os.path.join(out, "config.json"))

  images = tmp_path / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (50, 80, 3), dtype=np.uint8)).save(images / "a.jpg")
  Image.fromarray(rng.integers(0, 255, (90, 40), dtype=np.uint8)).save(images / "gray.png")
  # a second "a": its overlay must not overwrite a.jpg's
  Image.fromarray(rng.integers(0, 255, (30, 60, 3), dtype=np.uint8)).save(images / "a.png")
  (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  pred = str(tmp_path / "pred")
  cli.main(["predict", str(images), "--config", cfg, "--checkpoint", out, "--output", pred,
            "--min-score", "0.0", "--draw-threshold", "0.0"])
  assert "3 image(s)" in capsys.readouterr().out
  assert sorted(f for f in os.listdir(pred) if f.endswith(".png")) == ["a-2.png", "a.png",
                                                                        "gray.png"]
  assert np.asarray(Image.open(os.path.join(pred, "gray.png"))).shape == (90, 40, 3)
  with open(os.path.join(pred, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(pred, "images.json")) as f:
    imgs = json.load(f)
  assert [i["height"] for i in imgs] == [50, 30, 90]
  assert [i["overlay"] for i in imgs] == ["a.png", "a-2.png", "gray.png"]
  assert np.asarray(Image.open(os.path.join(pred, "a-2.png"))).shape == (30, 60, 3)
  for r in results:
    assert r["image_id"] in (1, 2, 3) and 1 <= r["category_id"] <= 3
    x, y, w, h = r["bbox"]
    im = imgs[r["image_id"] - 1]
    assert x >= 0 and y >= 0 and x + w <= im["width"] + 1e-3 and y + h <= im["height"] + 1e-3
    assert r["segmentation"]["size"] == [im["height"], im["width"]]


def test_predict_missing_input(tmp_path):
  import pytest
  with pytest.raises(FileNotFoundError, match="no such image"):
    cli.main(["predict", str(tmp_path / "nope.jpg"), "--config", write_config(tmp_path),
              "--checkpoint", str(tmp_path), "--output", str(tmp_path / "o")])
