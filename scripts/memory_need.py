"""How much memory per device an experiment's train step (and evaluation
step) needs, from XLA's memory analysis of the compiled programs: nothing
runs, no dataset is read, so it answers for batches and canvases this
machine could not train on.

  python scripts/memory_need.py --config experiments/mask_rcnn_r50_fpn_1x.py \\
      --per-device-batch 1,2,16 [--eval] [--num-classes 81] [--config.KEY=VALUE ...]

For each canvas of the config (one, or the landscape and portrait buckets)
and each per-device batch it prints what one device needs while the step
runs: temporaries + arguments (train state or weights, the batch) + outputs
not written into donated arguments, i.e. what the trainer's memory check
compares with the device's free memory (``mrcnn_jax/programs.py``). The
programs are compiled for the platform JAX runs on here (XLA:CPU on a CPU
machine); a GPU's compiler fuses and schedules differently, so its figure
differs -- run it there for the GPU's own. One JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith("--config.")]
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="experiments/mask_rcnn_r50_fpn_1x.py")
  p.add_argument("--per-device-batch", default="1,2")
  p.add_argument("--eval", action="store_true", help="also the evaluation step "
                 "(config.eval_batch_size per device count)")
  p.add_argument("--num-classes", type=int, default=81,
                 help="when the config takes them from its dataset (num_classes 0)")
  args = p.parse_args([a for a in argv if not a.startswith("--config.")])

  import jax
  from mrcnn_jax import cli, evaluate, experiment, programs, train
  from mrcnn_jax.input_spec import InputSpec
  from mrcnn_jax.model import variables_template
  config = cli.apply_overrides(cli.load_config(args.config), overrides)
  if config.model.num_classes <= 0:
    config.model.num_classes = args.num_classes
  model = experiment.build_model(config)
  template = variables_template(model)
  tx = train.make_optimizer(config, template["params"], model)
  state = train.train_state_template(template, tx)
  ndev = jax.local_device_count()
  rep = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((ndev,) + tuple(x.shape), x.dtype), tree)
  pstate, prng = rep(state), rep(jax.ShapeDtypeStruct((2,), jax.numpy.uint32))
  step = train.p_train_step(config, model, tx)
  predict = evaluate.p_predict_program(model)
  canvases = InputSpec.from_config(config.data).canvases
  resident = programs.tree_bytes(state)
  for b in (int(x) for x in args.per_device_batch.split(",")):
    for canvas in canvases:
      t0 = time.time()
      compiled = step.compiled(pstate, train.batch_spec(config, (ndev, b), canvas), prng)
      m = programs.ProgramMemory.of(compiled)
      print(json.dumps({
          "config": os.path.basename(args.config), "step": "train", "platform":
          jax.devices()[0].platform, "canvas": list(canvas), "per_device_batch": b,
          "needed_gib": round(m.needed() / programs.GIB, 2),
          "needed_beyond_state_gib": round(m.needed(resident) / programs.GIB, 2),
          "temp_gib": round(m.temp / programs.GIB, 2),
          "arguments_gib": round(m.arguments / programs.GIB, 2),
          "state_gib": round(resident / programs.GIB, 3),
          "compile_s": round(time.time() - t0, 1)}), flush=True)
      if args.eval:
        variables = rep(evaluate.state_variables(state))
        images, sizes = evaluate.predict_spec((ndev, b), canvas)
        m = programs.ProgramMemory.of(predict.compiled(variables, images, sizes))
        print(json.dumps({
            "config": os.path.basename(args.config), "step": "eval", "canvas": list(canvas),
            "per_device_batch": b, "needed_gib": round(m.needed() / programs.GIB, 2),
            "temp_gib": round(m.temp / programs.GIB, 2)}), flush=True)


if __name__ == "__main__":
  main()
