"""One process of tests/test_multiprocess.py's jobs (started by
scripts/launch_local.py, which appends ``--coordinator_address``,
``--num_processes`` and ``--process_id``; a reference run of one process
gets none). Prints ``RESULT <json>`` lines the test reads.

  multiprocess_worker.py MODE OUT_DIR DATA_DIR [launcher flags]

MODE ``explicit``: (with several processes) the clear errors first -- a
config that differs between processes, a global batch not divisible by
all devices -- then 3 steps on explicit global batches (each process feeds
its slice), evaluating at step 2 (``eval_every``), the final parameters
saved, and the evaluation of the result (metrics.json); then a run on the real input that SIGKILLs itself right
after its checkpoint of step 2 is written. ``restart``: that run started
again. ``reference``: the explicit run in one process on all devices, and
a one-process evaluation of the multi-process run's checkpoint.
"""

import argparse
import json
import logging
import os
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import synthetic_batch, tiny_config  # noqa: E402

GLOBAL_BATCH, STEPS = 4, 3


def result(**kw):
  print("RESULT " + json.dumps(kw), flush=True)


def explicit_batches(index, count):
  """The same global batches in every run; this process's slice of them."""
  import numpy as np
  rng = np.random.default_rng(0)
  while True:
    batch = synthetic_batch(rng, batch_dims=(GLOBAL_BATCH, 1))
    share = GLOBAL_BATCH // count
    yield {k: v[index * share:(index + 1) * share] for k, v in batch.items()}


def config_for(data_dir, **kw):
  c = tiny_config(**{**dict(batch_size=GLOBAL_BATCH, eval_batch_size=GLOBAL_BATCH,
                             total_steps=STEPS, checkpoint_every=1, keep_checkpoints=10,
                             log_every=100), **kw})
  c.data.data_dir = data_dir
  c.num_sample_images = 0
  c.model.roi_heads.box.score_threshold = 0.0  # detections to evaluate after 3 steps
  return c


def save_params(state, path):
  import jax
  import numpy as np
  from flax import traverse_util
  flat = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
  np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})


def clear_errors(data_dir):
  import jax
  from mrcnn_jax import distributed, train
  other = config_for(data_dir, seed=jax.process_index())  # differs in process 1
  try:
    distributed.agree(other.to_json_best_effort(sort_keys=True), "the config")
    result(config_error=None)
  except ValueError as e:
    result(config_error=str(e))
  try:
    train.device_batch_dims(config_for(data_dir, batch_size=6))
    result(batch_error=None)
  except ValueError as e:
    result(batch_error=str(e))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("mode")
  p.add_argument("out")
  p.add_argument("data_dir")
  p.add_argument("--coordinator_address")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  args = p.parse_args()
  logging.basicConfig(level=logging.INFO, format="%(relativeCreated)d %(levelname)s %(message)s")
  from mrcnn_jax import distributed
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         timeout_s=60)
  import jax
  from mrcnn_jax import evaluate, train
  index, count = jax.process_index(), jax.process_count()
  tag = f"p{count}"
  if args.mode == "explicit":
    clear_errors(args.data_dir)
    config = config_for(args.data_dir, eval_every=2)  # an evaluation at step 2 too
    workdir = os.path.join(args.out, "explicit")
    state = train.train(config, workdir, batches=explicit_batches(index, count))
    if index == 0:
      save_params(state, os.path.join(args.out, f"params_{tag}.npz"))
    evaluate.evaluate_workdir(config, workdir, state=state)
    result(explicit_done=index)
    # Killed (SIGKILL, nothing saved after) once step 2's checkpoint is done.
    real = train.checkpoints.save_train_state

    def save_then_die(mngr, state, meta, force=False):
      saved = real(mngr, state, meta, force=force)
      if int(meta["step"]) == 2:
        mngr.wait_until_finished()
        distributed.barrier("test: step 2 saved")
        os.kill(os.getpid(), signal.SIGKILL)
      return saved
    train.checkpoints.save_train_state = save_then_die
    train.train(config_for(args.data_dir, total_steps=4), os.path.join(args.out, "real"))
  elif args.mode == "restart":
    state = train.train(config_for(args.data_dir, total_steps=4),
                        os.path.join(args.out, "real"))
    result(restart_done=index, step=int(state.step))
  elif args.mode == "reference":
    config = config_for(args.data_dir)
    state = train.train(config, os.path.join(args.out, "reference"),
                        batches=explicit_batches(0, 1))
    save_params(state, os.path.join(args.out, f"params_{tag}.npz"))
    evaldir = os.path.join(args.out, "reference_eval")
    shutil.copytree(os.path.join(args.out, "explicit", "checkpoints"),
                    os.path.join(evaldir, "checkpoints"))
    evaluate.evaluate_workdir(config, evaldir)
    result(reference_done=0)


if __name__ == "__main__":
  main()
