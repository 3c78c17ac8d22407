"""Crash-safe, exactly resumable training (tiny config, CPU, 2 simulated
devices): a run stopped at step k (SIGTERM, or a normal end followed by a
larger total_steps) and resumed equals the uninterrupted run bit for bit at
every later checkpoint, with one canvas and with orientation buckets
(including stops inside a partly filled window); damaged checkpoints are
detected and skipped; the memory check stops a run that cannot fit before
its first step; an unwritable workdir fails at once.

Bit-identity is checked through the SHA-256 digest of the whole train state
(parameters, optimizer state, step) that every checkpoint carries.
"""

import itertools
import os
import re
import shutil
import signal

import numpy as np
import pytest

from mrcnn_jax import checkpoints, programs, train

from helpers import tiny_config
from test_train import batches_forever

N = 6  # steps of the runs: 12 examples, 1.5 epochs of the 8-example split


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  from mrcnn_jax.data import shapes
  path = str(tmp_path_factory.mktemp("tfds"))
  shapes.shapes_builder(path, num_train=8, num_validation=4)
  return path


def shapes_config(data_dir, buckets, total_steps, checkpoint_every=1):
  c = tiny_config(total_steps=total_steps, checkpoint_every=checkpoint_every,
                  keep_checkpoints=100, log_every=100)
  c.data.data_dir = data_dir
  if buckets:  # the custom-COCO end-to-end test's canvases (one program each)
    c.data.canvas = None
    c.data.canvases = ((64, 96), (96, 64))
    c.data.min_size = 64
    c.data.max_size = 96
  return c


def digests(workdir):
  return {s: checkpoints.read_train_meta(workdir, s)["state_sha256"]
          for s in checkpoints.train_steps(workdir)}


def stop_with_sigterm_at(monkeypatch, k):
  """SIGTERM arrives while batch k is being fetched: step k runs, is saved,
  and the run stops."""
  real = train.train_batches

  def batches(config, start=None):
    for i, batch in enumerate(real(config, start), 1):
      if i == k:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch
  monkeypatch.setattr(train, "train_batches", batches)


def test_stopped_and_resumed_runs_equal_the_uninterrupted_run(tiny_shapes, tmp_path,
                                                               monkeypatch):
  """Orientation buckets, 2 devices: a run that ends normally at k1 (inside a
  partly filled orientation window), is restarted with a larger total_steps,
  is stopped by SIGTERM at k2 and resumed to N has, at every checkpoint, the
  uninterrupted run's train state bit for bit. (One canvas is the same path
  with no window pending: the input stream alone is resumed after every
  batch, both ways, in tests/test_pipeline.py; scripts/chaos_train.py kills
  the one-canvas shapes trainer with SIGKILL.)"""
  count = lambda: sum(k[0][0] == "train_step" for k in programs._PROGRAMS)
  before = count()
  full = str(tmp_path / "full")
  train.train(shapes_config(tiny_shapes, True, N), full)
  want = digests(full)
  assert sorted(want) == list(range(1, N + 1))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(full))
  # The batches matched the programs compiled ahead of time, one per canvas
  # (none when an earlier test compiled them): none compiled at first sight.
  assert count() - before <= 2
  positions = {s: checkpoints.read_train_meta(full, s)["input"] for s in want}
  partial = [s for s in range(2, N - 1) if positions[s]["pending"]]
  assert partial, positions  # a stop inside a partly filled window
  k1 = partial[0]
  k2 = k1 + 1

  # Checkpoints only where a run ends (it saves its last step), so each
  # start resumes from the step the previous run stopped at.
  config = lambda total: shapes_config(tiny_shapes, True, total, checkpoint_every=100)
  wd = str(tmp_path / "stopped")
  train.train(config(k1), wd)  # a normal end at k1
  assert checkpoints.train_steps(wd) == [k1]
  with monkeypatch.context() as m:  # then a larger total_steps, and SIGTERM at k2
    stop_with_sigterm_at(m, k2 - k1)
    with pytest.raises(SystemExit, match=f"SIGTERM at step {k2}"):
      train.train(config(N), wd)
  assert checkpoints.train_steps(wd) == [k1, k2]
  state = train.train(config(N), wd)
  assert int(state.step) == N
  got = digests(wd)
  assert got == {s: want[s] for s in (k1, k2, N)}, f"stopped at {k1} (end), {k2} (SIGTERM)"


# ----------------------------------------------------------------------------
# Damaged checkpoints, unwritable workdirs (synthetic batches: no TensorFlow)
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  """A workdir with checkpoints 1..3 of the tiny config, and their digests."""
  wd = str(tmp_path_factory.mktemp("pristine") / "wd")
  c = tiny_config(total_steps=3, checkpoint_every=1)
  train.train(c, wd, batches=batches_forever(train.device_batch_dims(c)))
  return wd, digests(wd)


def _largest_file(root):
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return max(files, key=os.path.getsize)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(path):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    for i in range(len(data) // 3, len(data) // 3 + 16):
      data[i] ^= 0xFF
    f.seek(0)
    f.write(data)


DAMAGE = {
    "truncated_data_file": (lambda s: _truncate(_largest_file(os.path.join(s, "state"))),
                            "cannot be read"),
    "flipped_bytes": (lambda s: _flip_bytes(_largest_file(os.path.join(s, "state"))),
                      r"cannot be read|digest"),
    "missing_manifest": (lambda s: os.remove(os.path.join(s, "state", "manifest.ocdbt")),
                         "cannot be read"),
    "missing_state_dir": (lambda s: shutil.rmtree(os.path.join(s, "state")),
                          "directory state/ is missing"),
    "truncated_meta": (lambda s: _truncate(os.path.join(s, "meta", "metadata")),
                       "cannot be read"),
    "half_written": (lambda s: os.rename(s, s + ".orbax-checkpoint-tmp-1234567"),
                     "still being written"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_is_named_and_the_run_resumes_from_the_last_intact(
    pristine, tmp_path, caplog, kind):
  src, want = pristine
  wd = str(tmp_path / "wd")
  shutil.copytree(src, wd)
  damage, reason = DAMAGE[kind]
  damage(os.path.join(wd, "checkpoints", "3"))
  c = tiny_config(total_steps=3, checkpoint_every=1)
  third = itertools.islice(batches_forever(train.device_batch_dims(c)), 2, None)
  with caplog.at_level("INFO", logger="mrcnn_jax"):
    state = train.train(c, wd, batches=third)
  text = caplog.text
  assert "step 3" in text or "/checkpoints/3" in text, text
  assert re.search(reason, text), text
  assert "at step 2" in text  # resumed from the newest intact checkpoint
  assert int(state.step) == 3 and digests(wd) == want  # and retrained step 3 exactly
  if kind != "half_written":
    assert os.listdir(os.path.join(wd, "damaged_checkpoints"))[0].startswith("3-")


def test_another_optimizer_is_not_damage_but_an_error(pristine, tmp_path):
  src, _ = pristine
  wd = str(tmp_path / "wd")
  shutil.copytree(src, wd)
  c = tiny_config(total_steps=4)
  c.optimizer.grad_clip_norm = 0.0  # another optimizer state structure
  with pytest.raises(checkpoints.CheckpointMismatchError, match="another model or optimizer"):
    train.train(c, wd, batches=batches_forever(train.device_batch_dims(c)))
  assert checkpoints.train_steps(wd) == [1, 2, 3]  # nothing moved


def test_an_unwritable_workdir_fails_at_once(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(PermissionError, match="cannot be written"):
    train.train(tiny_config(), str(blocker / "wd"), batches=iter(()))


# ----------------------------------------------------------------------------
# Memory checked before the first step
# ----------------------------------------------------------------------------

def test_a_batch_too_large_for_the_memory_stops_before_the_first_step(tmp_path):
  c = tiny_config(total_steps=3)
  c.memory_limit_gb = 1e-4  # ~100 KiB "available"

  def no_batch_may_be_read():
    raise AssertionError("a batch was read")
    yield  # pylint: disable=unreachable

  with pytest.raises(MemoryError) as info:
    train.train(c, str(tmp_path / "wd"), batches=no_batch_may_be_read())
  msg = str(info.value)
  for part in ("not enough memory for the train step on canvas 64x64", "per device",
               "available: 0.00 GiB (config.memory_limit_gb=0.0001)", "Not even one image",
               "--config.check_memory=False"):
    assert part in msg, msg
  assert checkpoints.train_steps(str(tmp_path / "wd")) == []
  c.check_memory = False  # the check can be skipped
  c.total_steps = 1
  state = train.train(c, str(tmp_path / "wd"), batches=batches_forever((2, 1)))
  assert int(state.step) == 1


def test_the_largest_per_device_batch_that_fits_is_estimated():
  gib = programs.GIB
  at = lambda b: programs.ProgramMemory(temp=(1 + 2 * b) * gib, arguments=gib // 2,
                                        outputs=0, aliased=0, code=0)
  avail = programs.Available(int(8.5 * gib), "test", shared=True)
  # 2 devices sharing 8.5 GiB: b images per device need 2 x (1.5 + 2b) GiB.
  with pytest.raises(programs.InsufficientMemoryError) as info:
    programs.check("the train step", at(8), per_device_batch=8, num_devices=2, avail=avail,
                   at_batch=at, advice=lambda b: f" (lr for {b})")
  msg = str(info.value)
  assert "needs 17.50 GiB per device at 8 image(s)" in msg, msg
  assert "largest per-device batch that fits is about 1: --config.batch_size=2" in msg, msg
  assert "(lr for 2)" in msg
  # on separate devices (a GPU each) 8.5 GiB per device fits 3 images
  per_gpu = programs.Available(int(8.5 * gib), "test", shared=False)
  with pytest.raises(programs.InsufficientMemoryError, match="about 3: --config.batch_size=6"):
    programs.check("x", at(8), per_device_batch=8, num_devices=2, avail=per_gpu, at_batch=at)
  assert programs.check("x", at(3), per_device_batch=3, num_devices=2, avail=per_gpu,
                        at_batch=at) == int(7.5 * gib)
