"""`mrcnn-jax convert` on a torchvision-layout .pth (made by
scripts/make_tiny_checkpoint.py) and `mrcnn-jax predict` on image files,
including a grayscale image and a corrupt file. No TensorFlow needed."""

import json
import logging
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


def test_convert_then_predict(tmp_path, capsys, caplog):
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
  # Bad files are skipped, named and counted; CMYK and 16-bit are read as
  # the pipeline reads them (tests/test_image_io.py checks the pixels).
  (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  (images / "empty.png").write_bytes(b"")
  jpeg = (images / "a.jpg").read_bytes()
  (images / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
  Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).convert("CMYK").save(
      images / "cmyk.jpg")
  Image.fromarray(rng.integers(0, 65535, (30, 30), dtype=np.uint16)).save(images / "g16.png")
  pred = str(tmp_path / "pred")
  with caplog.at_level(logging.WARNING, logger="mrcnn_jax"):
    cli.main(["predict", str(images), "--config", cfg, "--checkpoint", out, "--output", pred,
              "--min-score", "0.0", "--draw-threshold", "0.0"])
  printed = capsys.readouterr().out
  assert "5 image(s)" in printed and "3 skipped" in printed
  for name, why in [("broken.png", "cannot be read"), ("empty.png", "is empty"),
                    ("truncated.jpg", "cannot be read")]:
    assert f"skipped: image {images / name} {why}" in caplog.text
  assert sorted(f for f in os.listdir(pred) if f.endswith(".png")) == [
      "a-2.png", "a.png", "cmyk.png", "g16.png", "gray.png"]
  assert np.asarray(Image.open(os.path.join(pred, "gray.png"))).shape == (90, 40, 3)
  with open(os.path.join(pred, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(pred, "images.json")) as f:
    imgs = json.load(f)
  assert [i["height"] for i in imgs] == [50, 30, 40, 30, 90]
  assert [i["overlay"] for i in imgs] == ["a.png", "a-2.png", "cmyk.png", "g16.png", "gray.png"]
  assert np.asarray(Image.open(os.path.join(pred, "a-2.png"))).shape == (30, 60, 3)
  for r in results:
    assert r["image_id"] in (1, 2, 3, 4, 5) and 1 <= r["category_id"] <= 3
    x, y, w, h = r["bbox"]
    im = imgs[r["image_id"] - 1]
    assert x >= 0 and y >= 0 and x + w <= im["width"] + 1e-3 and y + h <= im["height"] + 1e-3
    assert r["segmentation"]["size"] == [im["height"], im["width"]]


def test_predict_missing_input(tmp_path):
  import pytest
  with pytest.raises(FileNotFoundError, match="no such image"):
    cli.main(["predict", str(tmp_path / "nope.jpg"), "--config", write_config(tmp_path),
              "--checkpoint", str(tmp_path), "--output", str(tmp_path / "o")])


def test_config_overrides_are_checked_before_any_command_runs(tmp_path, capsys, monkeypatch):
  """A misspelt key, a value of the wrong type or a section replaced by a
  value stops `mrcnn-jax` at parse time (exit 2) with the key named; nothing
  is added to the config or ignored."""
  import pytest
  ran = []
  for name in ("cmd_train", "cmd_evaluate", "cmd_predict", "cmd_convert", "cmd_export"):
    monkeypatch.setattr(cli, name, lambda args, name=name: ran.append((name, args)))
  cases = [
      (["train", "--config.modle.depth=1"],
       "--config.modle.depth: config has no field 'modle'; did you mean 'model'?"),
      (["train", "--config.model.backbone.dept=50"],
       "--config.model.backbone.dept: config.model.backbone has no field 'dept'; "
       "did you mean 'depth'?"),
      (["evaluate", "--config.model.backbone.depth=fifty"],
       "--config.model.backbone.depth=fifty: config.model.backbone.depth is a int (now 18), "
       "got 'fifty' (str)"),
      (["convert", "--checkpoint", "x.pth", "--output", "o", "--config.model.fpn=3"],
       "--config.model.fpn: config.model.fpn is a section"),
      (["train", "--config.total_steps.x=1"],
       f"--config.total_steps.x: config.total_steps is a int "
       f"({cli.load_config(cli.DEFAULT_CONFIG).total_steps}), not a section"),
      (["train", "--config.total_steps"], "expected --config.KEY=VALUE"),
      (["train", "--config", str(tmp_path / "nope.py")], "config file not found"),
  ]
  for argv, message in cases:
    with pytest.raises(SystemExit) as info:
      cli.main(argv)
    assert info.value.code == 2, argv
    assert message in capsys.readouterr().err, argv
  assert not ran
  # Valid overrides reach the command; a str field takes its text as written.
  cli.main(["train", "--config.data.data_dir=2024", "--config.optimizer.base_lr=1",
            "--config.model.rpn.anchor_sizes=((8,),(16,),(32,),(64,),(128,))"])
  config = ran[-1][1].loaded_config
  assert config.data.data_dir == "2024" and config.optimizer.base_lr == 1.0
  assert config.model.rpn.anchor_sizes[0] == (8,)
  cli.main(["convert", "--checkpoint", "x.pth", "--output", "o"])
  assert ran[-1][1].loaded_config.model.backbone.depth == 50  # its own default config
