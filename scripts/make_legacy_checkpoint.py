"""Writes tests/data/legacy_layout1/: a training checkpoint of the tiny test
config in the variable layout of mrcnn_jax before the model was split into
parts (layout 1: fpn/, rpn_head/, box_head/, box_predictor/, mask_head/),
plus that model's inference outputs and losses on a fixed synthetic batch.
``tests/test_checkpoints.py`` checks that today's code reads it and gives
the same answers, and refuses to resume training from it with a clear
message.

It needs the old code, so run it from a checkout of commit 5de4eff (the
last one with layout 1)::

  git worktree add /tmp/layout1 5de4eff
  cd /tmp/layout1 && XLA_FLAGS=--xla_force_host_platform_device_count=1 \\
      python /path/to/this/scripts/make_legacy_checkpoint.py /path/to/this/tests/data
"""

import os
import shutil
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.getcwd(), "tests"))

from helpers import synthetic_batch, tiny_config  # noqa: E402  (the old checkout's)

from mrcnn_jax import train  # noqa: E402


def main(out_root: str):
  out = os.path.join(os.path.abspath(out_root), "legacy_layout1")
  shutil.rmtree(out, ignore_errors=True)
  c = tiny_config()
  model, state = train.create_train_state(c, jax.random.PRNGKey(0))
  assert "rpn_head" in state.params, "run this in a checkout with the old layout"
  tx = train.make_optimizer(c, state.params)
  devices = jax.local_devices()[:1]
  step = train.make_p_train_step(model, tx, c.loss_weights)
  batch = synthetic_batch(np.random.default_rng(0), batch_dims=(1, 2))
  ps, _ = step(train.replicate(state, devices), batch, train.replicate(
      jax.random.PRNGKey(1), devices))
  state = train.unreplicate(ps)
  mngr = train.checkpoint_manager(out, c)
  train.save_checkpoint(mngr, state, {"step": 1, "examples_seen": 2, "seed": 0})
  mngr.wait_until_finished()
  mngr.close()
  flat = {k: v[0] for k, v in batch.items()}
  det = jax.device_get(jax.jit(model.apply)({"params": state.params}, flat["image"],
                                            flat["image_size"]))
  outs = model.apply({"params": state.params}, flat["image"], flat["image_size"],
                     flat["gt_boxes"], flat["gt_labels"], flat["gt_valid"], flat["gt_masks"],
                     jax.random.PRNGKey(3), method=model.train_outputs)
  _, losses = train.compute_losses(outs, c.loss_weights)
  np.savez_compressed(
      os.path.join(out, "expected.npz"),
      **{f"batch_{k}": v for k, v in flat.items()},
      **{f"det_{k}": np.asarray(det[k]) for k in ("boxes", "scores", "labels", "valid",
                                                  "masks")},
      **{f"loss_{k}": np.asarray(v) for k, v in losses.items()})
  print(f"wrote {out}")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "data"))
