"""The benchmark scripts' own plumbing (their timings are not tested)."""

from helpers import load_script


def test_benchmark_train_passes_its_children_every_option_but_framework_and_out():
  drop = load_script("benchmark_train").drop_option
  argv = ["--framework", "both", "--runs", "5", "--out=x.jsonl", "--set", "a=1",
          "--framework=both", "--out", "y.jsonl", "--batch", "2"]
  assert drop(drop(argv, "--framework"), "--out") == [
      "--runs", "5", "--set", "a=1", "--batch", "2"]
  assert drop(["--outdir", "d"], "--out") == ["--outdir", "d"]
