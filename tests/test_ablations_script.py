"""scripts/ablations.py: the report from run records (mean and spread over
seeds, shared runs, the figure), and one quick run end to end (train,
evaluate without a mask branch, time, record, report)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import ablations  # noqa: E402


def _record(out, name, seed, mask_ap, box_ap, quick=True):
  chash = ablations.config_hash(ablations.load_variant(name, quick))
  rec = {"variant": name, "seed": seed, "config_hash": chash, "steps": 2, "batch_size": 2,
         "canvas": [64, 64], "num_validation": 4, "train_s": 120.0, "eval_s": 1.0,
         "infer_ms": 10.0 + seed, "command": "python scripts/ablations.py --quick",
         "commit": "abc1234", "machine": "test machine", "date": "2026-11-29",
         "metrics": {"segm/AP": mask_ap, "segm/AP50": mask_ap, "segm/AP75": mask_ap,
                     "bbox/AP": box_ap}}
  path = ablations.run_path(out, chash, seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(rec, f)


def test_report_mean_spread_and_shared_runs(tmp_path):
  out = str(tmp_path)
  _record(out, "mask_loss_softmax", 0, 10.0, 50.0)
  _record(out, "mask_loss_softmax", 1, 14.0, 52.0)
  _record(out, "mask_loss_sigmoid", 0, 30.0, 60.0)
  _record(out, "mask_loss_sigmoid", 1, None, 61.0)  # e.g. no segm metric: left out, n counts
  text = ablations.write_report(out, list(ablations.GROUPS), [0, 1], quick=True)
  rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines()
          if line.startswith("| mask_") or line.startswith("| backbone_")}
  # mean ± sample sd over the seeds: (10, 14) -> 12.0 ± 2.8; n = 2 runs
  assert rows["mask_loss_softmax"][1] == "12.0 ± 2.8"
  assert rows["mask_loss_softmax"][4] == "51.0 ± 1.4"
  assert rows["mask_loss_softmax"][5] == "2.0 ± 0.0"  # train minutes
  assert rows["mask_loss_softmax"][6] == "10.5 ± 0.7"  # inference ms
  assert rows["mask_loss_sigmoid"][1] == "30.0" and rows["mask_loss_sigmoid"][7] == "2"
  # The same config under another group's name shares the runs.
  assert rows["mask_head_fcn"][1] == "30.0" and rows["backbone_fpn"][4] == "60.5 ± 0.7"
  assert rows["backbone_c4"][1] == "--" and rows["backbone_c4"][7] == "0"
  assert "C4 softmax: 24.8 / 44.1 / 25.1" in rows["mask_loss_softmax"][8]
  assert "python scripts/ablations.py --quick" in text and "test machine" in text
  try:
    import matplotlib  # noqa: F401  (the optional [ablations] extra)
  except ImportError:
    return
  assert os.path.getsize(os.path.join(out, "ablations.png")) > 1000


def test_bad_group_is_a_clear_error(capsys):
  with pytest.raises(SystemExit):
    ablations.parse_args(["--only", "pooler,roi_heads"])
  assert "unknown group(s) ['roi_heads']" in capsys.readouterr().err


def test_quick_run_end_to_end(tmp_path):
  """One variant (Faster R-CNN: evaluation without masks), one seed, through
  the command line: train, evaluate, time, record, report."""
  pytest.importorskip("tensorflow_datasets")
  out = str(tmp_path / "out")
  ablations.main(["--quick", "--only", "mask_branch", "--variants", "mask_branch_off",
                  "--seeds", "0", "--out", out, "--workdir", str(tmp_path / "wd"),
                  "--data-dir", str(tmp_path / "tfds"), "--infer-runs", "2"])
  (name,) = os.listdir(os.path.join(out, "runs"))
  with open(os.path.join(out, "runs", name)) as f:
    rec = json.load(f)
  assert rec["variant"] == "mask_branch_off" and rec["steps"] == 2 and rec["quick"]
  assert rec["train_s"] > 0 and rec["infer_ms"] > 0
  assert "bbox/AP" in rec["metrics"] and "segm/AP" not in rec["metrics"]
  with open(os.path.join(out, "ablations.md")) as f:
    text = f.read()
  assert "| mask_branch_off | -- | -- | -- |" in text and "--variants mask_branch_off" in text


def test_softmax_readout_needs_the_finished_runs_and_is_reported(tmp_path):
  out = str(tmp_path)
  with pytest.raises(SystemExit, match="needs the finished mask_loss_softmax run of seed 0"):
    ablations.main(["--quick", "--softmax-readout", "--seeds", "0", "--out", out,
                    "--workdir", str(tmp_path / "wd")])
  _record(out, "mask_loss_softmax", 0, 5.0, 50.0)
  with pytest.raises(SystemExit, match="checkpoint .* is gone"):
    ablations.main(["--quick", "--softmax-readout", "--seeds", "0", "--out", out,
                    "--workdir", str(tmp_path / "wd")])
  with open(os.path.join(out, ablations.SOFTMAX_READOUT_FILE), "w") as f:
    json.dump({"command": "python scripts/ablations.py --softmax-readout", "machine": "m",
               "date": "2026-11-30", "commit": "abc1234",
               "seeds": {"0": {"class": {"segm/AP": 5.0}, "foreground": {"segm/AP": 40.0}},
                         "1": {"class": {"segm/AP": 9.0}, "foreground": {"segm/AP": 44.0}}}}, f)
  text = ablations.write_report(out, ["mask_loss"], [0], quick=True)
  assert "mask AP 7.0 ± 2.8 -> 42.0 ± 2.8" in text
  assert "1 - p(background)" not in ablations.write_report(out, ["pooler"], [0], quick=True)
