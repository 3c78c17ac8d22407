"""Training and evaluation in several processes (``jax.distributed`` on
127.0.0.1, gloo collectives, 2 processes x 2 simulated CPU devices), as on
several hosts: the update equals one process's on all 4 devices, a job
killed after a checkpoint resumes from it in every process, the merged
evaluation equals a one-process one, and the errors a user can cause are
clear (no hang). Also: each process's share of the input.

Three launches of ``tests/multiprocess_worker.py`` (two through
``scripts/launch_local.py``) do all of it, in one test; see that file for
what each runs.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")


def _launch_local():
  spec = importlib.util.spec_from_file_location(
      "launch_local", os.path.join(ROOT, "scripts", "launch_local.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(
      os.pathsep) if p])
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  return env


class Run:
  """A launch's exit statuses, output and ``RESULT`` records by process."""

  def __init__(self, codes, text):
    self.codes, self.text = codes, text
    self.results = {}
    for line in text.splitlines():
      m = re.match(r"^(?:\[(\d+)\] )?RESULT (.*)$", line)
      if m:
        self.results.setdefault(int(m.group(1) or 0), {}).update(json.loads(m.group(2)))

  def lines(self, process, pattern):
    return [l for l in self.text.splitlines()
            if l.startswith(f"[{process}] ") and re.search(pattern, l)]


def _run(launcher, out, data_dir, mode, log_path):
  with open(log_path, "w") as f:
    codes = launcher.launch([sys.executable, WORKER, mode, out, data_dir], 2, 2, env=_env(),
                            out=f, timeout=400)
  with open(log_path) as f:
    return Run(codes, f.read())


def _start_reference(launcher, out, data_dir, log_path):
  """The reference, one process on all 4 devices (no launcher flags), in
  the background: it needs only the explicit run's checkpoint."""
  f = open(log_path, "w")
  return subprocess.Popen([sys.executable, WORKER, "reference", out, data_dir],
                          env=launcher.process_env(4, _env()), stdout=f,
                          stderr=subprocess.STDOUT), f


def _launches(base):
  from mrcnn_jax.data import shapes
  data_dir = str(base / "tfds")
  shapes.shapes_builder(data_dir, num_train=8, num_validation=4)
  out = str(base / "out")
  os.makedirs(out)
  launcher = _launch_local()
  explicit = _run(launcher, out, data_dir, "explicit", str(base / "explicit.log"))
  proc, log = _start_reference(launcher, out, data_dir, str(base / "reference.log"))
  try:
    restart = _run(launcher, out, data_dir, "restart", str(base / "restart.log"))
    code = proc.wait(timeout=400)
  finally:
    if proc.poll() is None:
      proc.kill()
    log.close()
  reference = Run([code], open(base / "reference.log").read())
  return {"explicit": explicit, "restart": restart, "reference": reference, "out": out,
          "data_dir": data_dir}


def _tail(run):
  return run.text[-6000:]


def _check_two_processes_update_equals_one_process_on_all_devices(runs):
  explicit, reference = runs["explicit"], runs["reference"]
  # Both processes finished the explicit run (they are SIGKILLed later on
  # purpose, in the run on the real input).
  assert {p: r.get("explicit_done") for p, r in explicit.results.items()} == {0: 0, 1: 1}, (
      _tail(explicit))
  assert reference.codes == [0], _tail(reference)
  a = np.load(os.path.join(runs["out"], "params_p2.npz"))
  b = np.load(os.path.join(runs["out"], "params_p1.npz"))
  assert sorted(a.files) == sorted(b.files) and len(a.files) > 50
  diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)
  assert diff <= 1e-5, diff
  from mrcnn_jax import checkpoints
  meta = checkpoints.read_train_meta(os.path.join(runs["out"], "explicit"), 3)
  assert meta["step"] == 3 and meta["examples_seen"] == 12


def _check_killed_job_resumes_from_its_checkpoint_in_every_process(runs):
  explicit, restart = runs["explicit"], runs["restart"]
  assert explicit.codes == [-9, -9], _tail(explicit)  # SIGKILL right after step 2's save
  from mrcnn_jax import checkpoints
  real = os.path.join(runs["out"], "real")
  # (steps 3 and 4 are the restarted run's)
  meta = checkpoints.read_train_meta(real, 2)
  assert meta["input"] is None and len(meta["input_per_process"]) == 2
  # 2 steps x 4 images: 4 examples of each process's 4-example shard.
  assert [p["next"] for p in meta["input_per_process"]] == [4, 4]
  assert restart.codes == [0, 0], _tail(restart)
  for p in (0, 1):
    assert restart.lines(p, r"resumed from .* at step 2"), _tail(restart)
    assert restart.results[p] == {"restart_done": p, "step": 4}
    assert not restart.lines(p, r"ERROR|not exactly where"), _tail(restart)
  assert checkpoints.train_steps(real) == [1, 2, 3, 4]


def _check_merged_evaluation_equals_one_process(runs):
  explicit = runs["explicit"]
  merged = explicit.lines(0, r"evaluated 4 images in 2 processes, (\d+) detections")
  assert merged, _tail(explicit)
  assert int(re.search(r"(\d+) detections", merged[0]).group(1)) > 0
  two = json.load(open(os.path.join(runs["out"], "explicit", "metrics.json")))
  one = json.load(open(os.path.join(runs["out"], "reference_eval", "metrics.json")))
  assert two == one
  assert two["step"] == 3 and "segm/AP" in two
  assert not os.listdir(os.path.join(runs["out"], "explicit", "eval_parts"))
  # eval_every=2: evaluated during training too, its AP in TensorBoard (from
  # process 0 only: one event file).
  assert len(explicit.lines(0, r"evaluated 4 images in 2 processes")) == 2
  events = [f for f in os.listdir(os.path.join(runs["out"], "explicit"))
            if f.startswith("events.out.tfevents")]
  assert len(events) == 1
  with open(os.path.join(runs["out"], "explicit", events[0]), "rb") as f:
    assert b"eval/segm/AP" in f.read()


def _check_clear_errors(runs):
  explicit = runs["explicit"]
  for p in (0, 1):
    r = explicit.results[p]
    assert "the config differs between processes: process(es) [1]" in r["config_error"]
    assert r["batch_error"] == ("config.batch_size=6 is not divisible by the 4 devices "
                                "(2 processes x 2 local devices)")


def test_two_processes_train_resume_evaluate_and_fail_clearly(tmp_path):
  """One test (the launches are shared and pytest-xdist would repeat a
  module fixture in each worker)."""
  pytest.importorskip("tensorflow_datasets")
  runs = _launches(tmp_path)
  _check_clear_errors(runs)
  _check_two_processes_update_equals_one_process_on_all_devices(runs)
  _check_merged_evaluation_equals_one_process(runs)
  _check_killed_job_resumes_from_its_checkpoint_in_every_process(runs)


def test_unreachable_coordinator_fails_fast_naming_it(tmp_path):
  launcher = _launch_local()
  address = f"127.0.0.1:{launcher.free_port()}"  # nobody listens there
  p = subprocess.run(
      [sys.executable, "-m", "mrcnn_jax.cli", "train", "--config",
       os.path.join(ROOT, "experiments", "shapes_tiny.py"), "--workdir", str(tmp_path / "w"),
       "--coordinator_address", address, "--num_processes", "2", "--process_id", "1",
       "--distributed_timeout", "2"],
      env=_env(), capture_output=True, text=True, timeout=120)
  assert p.returncode != 0
  assert f"the coordinator {address} cannot be reached within 2 s" in p.stderr, p.stderr[-3000:]
  p = subprocess.run(
      [sys.executable, "-m", "mrcnn_jax.cli", "train", "--num_processes", "2"],
      env=_env(), capture_output=True, text=True, timeout=120)
  assert p.returncode != 0 and "missing --coordinator_address, --process_id" in p.stderr


def test_input_shards_cover_the_split_once_per_epoch(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from mrcnn_jax.data import datasets, pipeline, shapes
  data_dir = str(tmp_path / "tfds")
  shapes.shapes_builder(data_dir, num_train=8, num_validation=4)
  c = tiny_config()
  c.data.data_dir = data_dir
  assert [pipeline.shard_size(8, i, 3) for i in range(3)] == [3, 3, 2]

  def epoch(shard, n):
    it = datasets.train_iterator(c, (1, 1), shard=shard)
    return [int(next(it)["image_id"].ravel()[0]) for _ in range(n)]

  whole = epoch((0, 1), 8)
  shards = [epoch((i, 2), 4) for i in range(2)]
  assert sorted(whole) == sorted(shards[0] + shards[1])  # the union is the split
  assert len(set(shards[0] + shards[1])) == 8  # nothing twice in an epoch
  # The next epoch of a shard is the same examples, in its own order.
  again = datasets.train_iterator(c, (1, 1), shard=(1, 2))
  ids = [int(next(again)["image_id"].ravel()[0]) for _ in range(8)]
  assert sorted(ids[:4]) == sorted(ids[4:]) == sorted(shards[1])


def test_cluster_environment_and_partial_flags():
  from mrcnn_jax import distributed
  assert distributed.cluster_environment({}) is None
  assert distributed.cluster_environment({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert distributed.cluster_environment({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "SLURM"
  assert distributed.cluster_environment({"OMPI_COMM_WORLD_SIZE": "2"}) == "Open MPI"
  assert distributed.cluster_environment({"TPU_WORKER_HOSTNAMES": "a,b"}) == "TPU pod"
  assert distributed.cluster_environment({"TPU_WORKER_HOSTNAMES": "a"}) is None
  with pytest.raises(ValueError, match="missing --num_processes"):
    distributed.initialize("127.0.0.1:1234", None, 0)
  with pytest.raises(ValueError, match=r"--process_id=2 must lie in \[0, --num_processes=2\)"):
    distributed.initialize("127.0.0.1:1234", 2, 2)
  assert distributed.initialize("127.0.0.1:1234", 1, 0) is False  # one process: nothing
