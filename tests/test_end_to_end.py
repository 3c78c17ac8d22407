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


def test_cli_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="config file not found"):
    cli.main(["train", "--config", str(tmp_path / "nope.py")])
  with pytest.raises(KeyError, match="no field"):
    cli.main(["train", "--workdir", str(tmp_path), "--config.not_a_key=3"])
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    cli.main(["evaluate", "--workdir", str(tmp_path / "empty"),
              "--config.data.num_train=8", "--config.data.num_validation=4"])
