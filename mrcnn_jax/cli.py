"""The ``mrcnn-jax`` command.

  mrcnn-jax train    [--config experiments/shapes.py] [--workdir DIR] [--config.KEY=VALUE ...]
  mrcnn-jax evaluate [--config ...] --workdir DIR [--config.KEY=VALUE ...]
  mrcnn-jax evaluate --config ... --checkpoint CONVERTED_DIR_OR.pth [--config.KEY=VALUE ...]
  (train and evaluate in several processes / hosts: --coordinator_address HOST:PORT
   --num_processes N --process_id I [--distributed_timeout S]; see README)
  mrcnn-jax predict  [--config ...] (--workdir DIR | --checkpoint PATH) --output OUT IMAGES...
  mrcnn-jax convert  --checkpoint FILE.pth --output DIR [--kind maskrcnn|backbone]
                     [--config experiments/mask_rcnn_r50_fpn.py]
                     (the config picks the family: faster_rcnn_r50_fpn.py,
                     mask_rcnn_r50_fpn_v2.py, keypoint_rcnn_r50_fpn.py, ...)
  mrcnn-jax export   [--config ...] (--workdir DIR | --checkpoint PATH) --output OUT
                     [--formats stablehlo,savedmodel,onnx] [--batch N] [--canvas HxW]

``train`` with no arguments trains the built-in shapes experiment into
``./workdir/shapes`` and then evaluates it; running it again resumes.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import logging
import os
import sys

import ml_collections

DEFAULT_CONFIG = "shapes.py"


def _experiments_dir() -> str:
  """``experiments/`` of the source checkout (the package is installed
  editable from it) or the current directory's."""
  here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
  return here if os.path.isdir(here) else os.path.join(os.getcwd(), "experiments")


def load_config(path: str | None) -> ml_collections.ConfigDict:
  """Imports a config file and calls its ``get_config()``."""
  if path is None:
    path = os.path.join(_experiments_dir(), DEFAULT_CONFIG)
  if not os.path.isfile(path):
    alt = os.path.join(_experiments_dir(), path)
    if os.path.isfile(alt):
      path = alt
    else:
      raise FileNotFoundError(f"config file not found: {path}")
  directory = os.path.dirname(os.path.abspath(path))
  if directory not in sys.path:  # configs import their base config
    sys.path.insert(0, directory)
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"config file {path} has no get_config()")
  return module.get_config()


class ConfigOverrideError(ValueError):
  """A ``--config.KEY=VALUE`` that names no field of the config, or a value
  of the wrong type; the message names the key."""


def _field_names(node) -> list[str]:
  return sorted(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []


def _no_field(key: str, where: str, name: str, node) -> ConfigOverrideError:
  fields = _field_names(node)
  close = difflib.get_close_matches(name, fields, n=3)
  hint = (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close
          else f"; it has {fields[:30]}{' ...' if len(fields) > 30 else ''}")
  return ConfigOverrideError(f"--config.{key}: {where} has no field {name!r}{hint}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]):
  """``--config.a.b=value`` -> config.a.b = literal_eval(value) (strings
  need no quotes; a str field takes the text as written). A key the config
  does not have, a value of another type than the field's, or replacing a
  whole section raises :class:`ConfigOverrideError` naming the key; nothing
  is added to the config or ignored."""
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise ConfigOverrideError(f"cannot parse override {item!r}; expected "
                                "--config.KEY=VALUE (one argument, with '=')")
    key, raw = item[len("--config."):].split("=", 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
      value = raw
    node, where = config, "config"
    *parents, leaf = key.split(".")
    for name in parents + [leaf]:
      if not isinstance(node, (ml_collections.ConfigDict, dict)):
        raise ConfigOverrideError(f"--config.{key}: {where} is a {type(node).__name__} "
                                  f"({node!r}), not a section with a field {name!r}")
      if name not in node:
        raise _no_field(key, where, name, node)
      if name != leaf:
        node, where = node[name], f"{where}.{name}"
    old = node[leaf]
    if isinstance(old, (ml_collections.ConfigDict, dict)):
      raise ConfigOverrideError(f"--config.{key}: config.{key} is a section (fields "
                                f"{_field_names(old)[:10]}); override its fields one by one")
    field_type = (node.get_type(leaf) if isinstance(node, ml_collections.ConfigDict)
                  else type(old))
    if field_type is str and not isinstance(value, str):
      value = raw  # e.g. --config.data.data_dir=2024
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise ConfigOverrideError(
          f"--config.{key}={raw}: config.{key} is a {field_type.__name__} (now {old!r}), "
          f"got {value!r} ({type(value).__name__})") from e
  return config


def _setup_logging():
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                      datefmt="%H:%M:%S")
  logging.getLogger("absl").setLevel(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _start_processes(args, config):
  """Before JAX's first computation: its CPU devices, and its distributed
  runtime when asked for (``--coordinator_address`` ...) or when a cluster
  environment says so. Processes other than the first log warnings and
  errors only."""
  from mrcnn_jax import distributed, runtime
  runtime.configure_cpu_devices(config)
  if runtime.HUGE_PAGE_TUNABLE in os.environ.get("GLIBC_TUNABLES", ""):
    logging.getLogger("mrcnn_jax").info(
        "malloc: transparent huge pages for XLA's buffers (GLIBC_TUNABLES=%s; "
        "MRCNN_JAX_HUGEPAGES=0 turns this off)", os.environ["GLIBC_TUNABLES"])
  try:
    started = distributed.initialize(args.coordinator_address, args.num_processes,
                                     args.process_id, timeout_s=args.distributed_timeout)
  except (ValueError, ConnectionError) as e:
    raise SystemExit(f"mrcnn-jax {args.command}: {e}") from None
  if started:
    if not distributed.is_primary():
      logging.getLogger().setLevel(logging.WARNING)
      logging.getLogger("mrcnn_jax").setLevel(logging.WARNING)


def _add_distributed_flags(p):
  g = p.add_argument_group("several processes / hosts (jax.distributed; omit all of them "
                           "for one process, or in a SLURM / Open MPI / TPU-pod job)")
  g.add_argument("--coordinator_address", default=None,
                 help="HOST:PORT of process 0 (it listens there)")
  g.add_argument("--num_processes", type=int, default=None)
  g.add_argument("--process_id", type=int, default=None, help="0 .. num_processes-1")
  g.add_argument("--distributed_timeout", type=float, default=300.0,
                 help="seconds to wait for the coordinator and the other processes")


def cmd_train(args):
  config = args.loaded_config
  _start_processes(args, config)  # before JAX's first computation
  from mrcnn_jax import checkpoints, distributed, evaluate, experiment, train
  workdir = args.workdir or os.path.join("workdir", os.path.splitext(
      os.path.basename(args.config or DEFAULT_CONFIG))[0])
  checkpoints.check_writable(workdir)  # before preparing a dataset
  info = experiment.dataset_info(config)
  state = train.train(config, workdir, info=info, check_eval=not args.no_eval)
  if not args.no_eval:
    metrics = evaluate.evaluate_workdir(config, workdir, state=state, info=info)
    if distributed.is_primary():
      writer = train.SummaryWriter(workdir)  # the last point of the eval/ curves
      writer.scalars(int(state.step), {f"eval/{k}": v for k, v in metrics.items()})
      writer.close()
      print({k: round(v, 2) for k, v in metrics.items()})
  if distributed.is_primary():
    print(f"workdir: {os.path.abspath(workdir)}")


def cmd_evaluate(args):
  config = args.loaded_config
  _start_processes(args, config)  # before JAX's first computation
  from mrcnn_jax import distributed, evaluate
  if not args.workdir and not args.checkpoint:
    raise SystemExit("mrcnn-jax evaluate: give --workdir (a training run) or --checkpoint")
  workdir = args.workdir or os.path.join("workdir", "eval_" + os.path.basename(
      os.path.normpath(args.checkpoint)))
  metrics = evaluate.evaluate_workdir(config, workdir, checkpoint=args.checkpoint)
  if distributed.is_primary():
    print({k: round(v, 2) for k, v in metrics.items()})


def cmd_predict(args):
  from mrcnn_jax import evaluate, experiment, predict
  config = args.loaded_config
  if not args.workdir and not args.checkpoint:
    raise SystemExit("mrcnn-jax predict: give --workdir (a training run) or --checkpoint")
  predict.find_images(args.images)  # fail on bad inputs before loading the model
  info = experiment.dataset_info(config)
  model = experiment.build_model(config, info,
                                 roi_heads__box__score_threshold=args.min_score)
  variables, _ = evaluate.load_inference_variables(model, workdir=args.workdir,
                                                   checkpoint=args.checkpoint)
  summary = predict.predict_files(config, model, variables, args.images, args.output,
                                  info=info, score_threshold=args.draw_threshold)
  print(f"{summary['images']} image(s), {summary['detections']} detections, "
        f"{len(summary['skipped'])} skipped -> {os.path.abspath(args.output)}")


def cmd_convert(args):
  import jax
  from mrcnn_jax import checkpoints, experiment
  from mrcnn_jax.model import init_params, variables_template
  from mrcnn_jax.weights import DETECTOR_KINDS, load_torchvision_checkpoint
  config = args.loaded_config
  model = experiment.build_model(config)
  # A whole Mask R-CNN replaces every variable (a template is enough); a
  # backbone keeps the other parts' initial values.
  template = (variables_template(model) if args.kind in DETECTOR_KINDS
              else jax.device_get(init_params(model, jax.random.PRNGKey(config.seed))))
  variables = load_torchvision_checkpoint(args.checkpoint, template, kind=args.kind,
                                          box_pool_size=model.box_head.pool_size)
  checkpoints.save_variables(args.output, variables, config)
  n = sum(x.size for x in jax.tree_util.tree_leaves(variables))
  print(f"converted {args.checkpoint} ({args.kind}, {n:,} values) -> {os.path.abspath(args.output)}")


def cmd_export(args):
  from mrcnn_jax import evaluate, experiment
  from mrcnn_jax import export as export_lib
  from mrcnn_jax.input_spec import InputSpec
  config = args.loaded_config
  if not args.workdir and not args.checkpoint:
    raise SystemExit("mrcnn-jax export: give --workdir (a training run) or --checkpoint")
  # Fail on bad arguments before loading anything.
  formats, canvas = export_lib.check_arguments(args.formats, args.canvas, args.output,
                                               args.overwrite)
  info = experiment.dataset_info(config)
  model = experiment.build_model(config, info)
  variables, _ = evaluate.load_inference_variables(model, workdir=args.workdir,
                                                   checkpoint=args.checkpoint)
  out = export_lib.export(
      model, variables, InputSpec.from_config(config.data), class_names=info.class_names,
      label_to_category_id=info.label_to_category_id, output_dir=args.output,
      formats=formats, batch=args.batch, canvas=canvas, masks_canvas=args.masks_canvas,
      overwrite=args.overwrite, config_name=os.path.basename(args.config or DEFAULT_CONFIG))
  print(f"exported {', '.join(out['files'].values())} (batch {out['batch']}, canvas "
        f"{out['canvas'][0]}x{out['canvas'][1]}) -> {os.path.abspath(args.output)}")


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog="mrcnn-jax", description="Mask R-CNN in JAX/Flax")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("train", help="train (default: the built-in shapes experiment), then evaluate")
  p.add_argument("--config", default=None, help="experiments/<name>.py (default: shapes.py)")
  p.add_argument("--workdir", default=None, help="default: workdir/<config name>")
  p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
  _add_distributed_flags(p)
  p.set_defaults(fn=cmd_train)
  p = sub.add_parser("evaluate", help="evaluate a workdir's latest checkpoint or a converted one")
  p.add_argument("--config", default=None)
  p.add_argument("--workdir", default=None, help="training run (latest checkpoint); "
                 "also where metrics.json and samples/ go")
  p.add_argument("--checkpoint", default=None,
                 help="a directory from `mrcnn-jax convert`, or a torchvision .pth")
  _add_distributed_flags(p)
  p.set_defaults(fn=cmd_evaluate)
  p = sub.add_parser("predict", help="run a checkpoint on image files or folders")
  p.add_argument("images", nargs="+", help="image files and/or folders")
  p.add_argument("--config", default=None)
  p.add_argument("--workdir", default=None)
  p.add_argument("--checkpoint", default=None)
  p.add_argument("--output", required=True, help="folder for overlays and results.json")
  p.add_argument("--min-score", type=float, default=0.05, help="detection score threshold")
  p.add_argument("--draw-threshold", type=float, default=0.5, help="score to draw a detection")
  p.set_defaults(fn=cmd_predict)
  p = sub.add_parser("convert", help="convert a torchvision .pth into mrcnn_jax variables")
  p.add_argument("--checkpoint", required=True, help="torchvision state_dict (.pth)")
  p.add_argument("--output", required=True, help="output directory (orbax)")
  p.add_argument("--kind", default="maskrcnn",
                 choices=("maskrcnn", "fasterrcnn", "keypointrcnn", "detector", "backbone"),
                 help="a whole torchvision detector (maskrcnn and its aliases; the config "
                 "gives the family) or an ImageNet ResNet as the backbone")
  p.add_argument("--config", default=None, help="default: experiments/mask_rcnn_r50_fpn.py; "
                 "the model family (faster_rcnn_r50_fpn.py, mask_rcnn_r50_fpn_v2.py, "
                 "keypoint_rcnn_r50_fpn.py)")
  p.set_defaults(fn=cmd_convert, default_config="mask_rcnn_r50_fpn.py")
  p = sub.add_parser("export", help="export a checkpoint as StableHLO / TF SavedModel / ONNX")
  p.add_argument("--config", default=None)
  p.add_argument("--workdir", default=None)
  p.add_argument("--checkpoint", default=None)
  p.add_argument("--output", required=True, help="folder for the artifacts and export.json")
  p.add_argument("--formats", default="stablehlo,savedmodel,onnx",
                 help="comma-separated: stablehlo, savedmodel, onnx (needs the export extra)")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--canvas", default=None, help="HxW (default: the config's first canvas)")
  p.add_argument("--masks-canvas", action="store_true",
                 help="also output masks pasted into the canvas (uint8 0/1)")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(fn=cmd_export)
  overrides = [a for a in argv if a.startswith("--config.")]
  args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
  # The config and its overrides are checked here, before any command starts
  # (a typo such as --config.modle.depth=1 stops with the key named).
  try:
    args.loaded_config = apply_overrides(
        load_config(args.config or getattr(args, "default_config", None)), overrides)
  except (ConfigOverrideError, FileNotFoundError) as e:
    sub.choices[args.command].error(str(e))  # exits with status 2
  _setup_logging()
  try:
    args.fn(args)
  except MemoryError as e:  # the check before the first step: its message, no traceback
    from mrcnn_jax.programs import InsufficientMemoryError
    if not isinstance(e, InsufficientMemoryError):
      raise
    raise SystemExit(f"mrcnn-jax {args.command}: {e}") from None


def entry():
  """The ``mrcnn-jax`` console script: :func:`main` in a process whose glibc
  gives XLA's buffers huge pages (``runtime.reexec_with_huge_page_malloc``;
  ``MRCNN_JAX_HUGEPAGES=0`` turns it off)."""
  from mrcnn_jax import runtime
  runtime.reexec_with_huge_page_malloc(["-m", "mrcnn_jax.cli", *sys.argv[1:]])
  main()


if __name__ == "__main__":
  main()
