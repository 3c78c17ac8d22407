"""The Mask R-CNN paper's ablations (He et al., 2017, Tables 2 and 3) on the
shapes dataset: trains every variant of each group with the same budget and
seeds, evaluates it with pycocotools, times its inference, and writes
``ablations.md`` (mask AP, AP50, AP75, box AP, train and inference time per
variant, mean and spread over the seeds, the paper's figures beside them)
and ``ablations.png`` (bar charts) into --out.

  python scripts/ablations.py                          # every group, seeds 0 and 1
  python scripts/ablations.py --only pooler            # one group (about an hour
                                                       # on a 2-core CPU)
  python scripts/ablations.py --only mask_loss,mask_head --seeds 0,1,2
  python scripts/ablations.py --report                 # tables + figure from the runs so far
  python scripts/ablations.py --r50-timing             # mask-branch cost, R50-FPN 800x1344
  python scripts/ablations.py --softmax-readout        # softmax masks read as 1 - p(bg)
  python scripts/ablations.py --quick --out /tmp/q --workdir /tmp/qw   # CI-sized, minutes

Groups (configs in experiments/ablations/, each importing ablation_base):

  pooler       RoIPool / RoIWarp / RoIAlign on the stride-32 C5 model (Table 2c, 2d)
  mask_loss    softmax (multinomial) / per-class sigmoid masks        (Table 2b)
  mask_head    MLP / FCN mask head                                    (Table 2e)
  backbone     C5 / C4 (res5 RoI head) / FPN                          (Table 2a)
  mask_branch  Faster R-CNN (no mask branch) / Mask R-CNN: box AP, time (Table 3)

Each finished run is one JSON file in --out/runs/, named by a hash of the
variant's resolved config and the seed, so a run is never repeated (variants
with the same config, e.g. the FPN base of four groups, share their runs) and
the report can be rebuilt from the files at any time. Training checkpoints go
to --workdir (not kept). Imports TensorFlow (the shapes input pipeline).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "experiments", "ablations")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# group -> (title, the paper's table, variants in display order: baseline first)
GROUPS = {
    "pooler": ("RoI pooling on the stride-32 C5 model", "Table 2c (C4), 2d (C5)",
               ("pooler_pool", "pooler_warp", "pooler_align")),
    "mask_loss": ("Mask loss: multinomial vs independent masks", "Table 2b",
                  ("mask_loss_softmax", "mask_loss_sigmoid")),
    "mask_head": ("Mask head: MLP vs FCN", "Table 2e", ("mask_head_mlp", "mask_head_fcn")),
    "backbone": ("Backbone: single-level C5 and C4 vs FPN", "Table 2a, 2d",
                 ("backbone_c5", "backbone_c4", "backbone_fpn")),
    "mask_branch": ("Faster R-CNN vs Mask R-CNN (the mask branch)", "Table 3",
                    ("mask_branch_off", "mask_branch_on")),
}

# The paper's COCO figures (ResNet-50 unless said), He et al. 2017, Tables 2
# and 3: variant -> (row as the paper names it, mask AP, AP50, AP75, box AP).
# None where the paper gives no figure. Table 3's detection rows are
# ResNet-101-FPN.
PAPER = {
    "pooler_pool": ("C5 RoIPool (C4: 26.9 / 48.8 / 26.4)", 23.6, 46.5, 21.6, 28.2),
    "pooler_warp": ("C4 RoIWarp (max)", 27.2, 49.2, 27.1, None),
    "pooler_align": ("C5 RoIAlign (C4, max: 30.2 / 51.0 / 31.8)", 30.9, 51.8, 32.1, 34.0),
    "mask_loss_softmax": ("C4 softmax", 24.8, 44.1, 25.1, None),
    "mask_loss_sigmoid": ("C4 sigmoid", 30.3, 51.2, 31.5, None),
    "mask_head_mlp": ("FPN MLP fc 1024-1024-80x28^2", 31.5, 53.7, 32.8, None),
    "mask_head_fcn": ("FPN FCN conv x4 + deconv", 33.6, 55.2, 35.3, None),
    "backbone_c5": ("C5 (RoIAlign, Table 2d)", 30.9, 51.8, 32.1, 34.0),
    "backbone_c4": ("R-50-C4", 30.3, 51.2, 31.5, None),
    "backbone_fpn": ("R-50-FPN", 33.6, 55.2, 35.3, None),
    "mask_branch_off": ("Faster R-CNN, RoIAlign (R-101-FPN)", None, None, None, 37.3),
    "mask_branch_on": ("Mask R-CNN (R-101-FPN)", None, None, None, 38.2),
}

COLUMNS = (("segm/AP", "mask AP"), ("segm/AP50", "AP50"), ("segm/AP75", "AP75"),
           ("bbox/AP", "box AP"))


# ============================================================================
# Configs and run records
# ============================================================================

def load_variant(name: str, quick: bool, data_dir: str | None = None):
  from mrcnn_jax.cli import load_config
  config = load_config(os.path.join(CONFIG_DIR, name + ".py"))
  if quick:
    import ablation_base  # on sys.path once load_config has run
    config = ablation_base.quick(config)
  if data_dir:
    config.data.data_dir = data_dir
  return config


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_diff(config) -> dict:
  """What a run trains, as its differences from the shapes experiment with
  its SGD recipe (experiments/shapes.py, ``shapes.use_sgd``: what every
  variant starts from), without seed and
  data location: {dotted key: value}. A field added to the library later with
  its default in both leaves the diff, and so the finished runs, unchanged."""
  sys.path.insert(0, os.path.dirname(CONFIG_DIR))
  import shapes  # experiments/shapes.py
  ref = _flat(shapes.use_sgd(shapes.get_config()).to_dict())
  cur = _flat(config.to_dict())
  diff = {k: v for k, v in cur.items() if k not in ref or ref[k] != v}
  diff.update({k: "<absent>" for k in ref if k not in cur})
  for k in ("seed", "data.data_dir"):
    diff.pop(k, None)
  return json.loads(json.dumps(diff, sort_keys=True, default=str))


def diff_hash(diff: dict) -> str:
  return hashlib.sha1(json.dumps(diff, sort_keys=True).encode()).hexdigest()[:12]


def config_hash(config) -> str:
  """Hash of what a run trains (``config_diff``)."""
  return diff_hash(config_diff(config))


def run_path(out: str, chash: str, seed: int) -> str:
  return os.path.join(out, "runs", f"{chash}_seed{seed}.json")


def machine() -> str:
  from bench_common import cpu_name, usable_cores
  import jax
  return (f"{cpu_name()}, {usable_cores()} usable cores, {platform.system()}, "
          f"jax {jax.__version__}")


def git_commit() -> str:
  try:
    out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=True,
                         capture_output=True, text=True).stdout.strip()
    # Changes to the results themselves (this script's own report) and to
    # documentation do not change what a run computes.
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no",
                            "--", ".", ":(exclude)experiments/results", ":(exclude)*.md"],
                           check=True, capture_output=True, text=True).stdout.strip()
    return out + ("+changes" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


# ============================================================================
# One run: train, evaluate, time inference
# ============================================================================

def inference_ms(model, variables, canvas, runs: int) -> float:
  """Median milliseconds of one jitted inference call on a batch of one
  canvas-sized image (compile and one warm-up call excluded)."""
  import jax
  import jax.numpy as jnp
  from bench_common import median_seconds
  infer = jax.jit(model.apply)
  images = jnp.zeros((1,) + tuple(canvas) + (3,), jnp.float32)
  sizes = jnp.asarray([canvas], jnp.int32)
  jax.block_until_ready(infer(variables, images, sizes))
  med, _ = median_seconds(lambda: jax.block_until_ready(infer(variables, images, sizes)), runs)
  return 1000.0 * med


def train_and_evaluate(name: str, config, seed: int, workdir: str, infer_runs: int) -> dict:
  import shutil
  from mrcnn_jax import evaluate, experiment, train
  config.seed = seed
  if os.path.isdir(workdir):  # a run cut short: start again, the budget is per run
    shutil.rmtree(workdir)
  from mrcnn_jax.data import datasets
  info = experiment.dataset_info(config)
  datasets.eval_coco_gt(config)  # generates the dataset if needed, before the clock starts
  t0 = time.time()
  state = train.train(config, workdir, info=info)
  train_s = time.time() - t0
  t0 = time.time()
  metrics = evaluate.evaluate_workdir(config, workdir, state=state, info=info)
  eval_s = time.time() - t0
  model = experiment.build_model(config, info)
  infer = inference_ms(model, evaluate.state_variables(state), config.data.canvas, infer_runs)
  return {"variant": name, "seed": seed, "steps": int(config.total_steps),
          "batch_size": int(config.batch_size), "canvas": list(config.data.canvas),
          "num_validation": int(config.data.num_validation),
          "metrics": {k: (None if v != v else v) for k, v in metrics.items()},
          "train_s": train_s, "eval_s": eval_s, "infer_ms": infer}


def run_group(group: str, args, command: str) -> None:
  for name in GROUPS[group][2]:
    if args.variants and name not in args.variants:
      continue
    config = load_variant(name, args.quick, args.data_dir)
    diff = config_diff(config)
    chash = diff_hash(diff)
    for seed in args.seeds:
      path = run_path(args.out, chash, seed)
      if os.path.exists(path) and not args.force:
        print(f"[ablations] {group}/{name} seed {seed}: done ({os.path.relpath(path, ROOT)})",
              flush=True)
        continue
      print(f"[ablations] {group}/{name} seed {seed}: training", flush=True)
      record = train_and_evaluate(name, config, seed,
                                  os.path.join(args.workdir, f"{name}_seed{seed}"),
                                  args.infer_runs)
      record.update(config_hash=chash, config_diff=diff, group=group, quick=args.quick,
                    command=command,
                    commit=git_commit(), machine=machine(),
                    date=datetime.date.today().isoformat())
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "w") as f:
        json.dump(record, f, indent=1)
      m = record["metrics"]
      print(f"[ablations] {group}/{name} seed {seed}: mask AP {m.get('segm/AP')}, box AP "
            f"{m['bbox/AP']:.1f}, train {record['train_s'] / 60:.1f} min, inference "
            f"{record['infer_ms']:.1f} ms/img", flush=True)


# ============================================================================
# Mask-branch cost at the paper's scale: R50-FPN, 800 x 1344, batch 1
# ============================================================================

def r50_timing(args) -> dict:
  """Inference time of torchvision's R50-FPN Mask R-CNN with and without the
  mask branch, same weights for everything they share (random, from
  ``init_params``; shapes are static, so the work does not depend on them)."""
  import jax
  from mrcnn_jax.cli import load_config
  from mrcnn_jax.model import build_model, init_params
  config = load_config(os.path.join(ROOT, "experiments", "mask_rcnn_r50_fpn.py"))
  canvas = (800, 1344)
  with_masks = build_model(config.model)
  variables = init_params(with_masks, jax.random.PRNGKey(0))
  without = build_model(config.model, mask_on=False)
  v_without = {"params": {k: v for k, v in variables["params"].items() if k != "mask_head"}}
  out = {"canvas": list(canvas), "batch": 1, "runs": args.infer_runs, "machine": machine(),
         "commit": git_commit(), "date": datetime.date.today().isoformat(),
         "command": "python scripts/ablations.py --r50-timing"}
  for key, model, v in (("mask_rcnn_ms", with_masks, variables),
                        ("faster_rcnn_ms", without, v_without)):
    out[key] = inference_ms(model, v, canvas, args.infer_runs)
    print(f"[ablations] R50-FPN {canvas[0]}x{canvas[1]} {key}: {out[key]:.0f} ms", flush=True)
  out["mask_branch_cost"] = out["mask_rcnn_ms"] / out["faster_rcnn_ms"] - 1.0
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "mask_branch_r50.json"), "w") as f:
    json.dump(out, f, indent=1)
  return out


# ============================================================================
# Softmax masks read two ways: the detected class's share, or all classes'
# ============================================================================

SOFTMAX_READOUT_FILE = "softmax_readout.json"


def softmax_readout(args) -> dict:
  """Evaluates the finished ``mask_loss_softmax`` runs again, their trained
  checkpoints (in --workdir) read as ``softmax_readout="foreground"`` (mask
  = 1 - p(background)) instead of the detected class's probability: the
  mask AP a softmax head reaches when its classes need not split a pixel.
  Writes softmax_readout.json into --out (the report shows it under the
  mask_loss table)."""
  from mrcnn_jax import evaluate
  name = "mask_loss_softmax"
  chash = config_hash(load_variant(name, args.quick))
  runs = load_runs(args.out)
  out = {"variant": name, "config_hash": chash, "machine": machine(), "commit": git_commit(),
         "date": datetime.date.today().isoformat(),
         "command": "python scripts/ablations.py --softmax-readout" + (
             " --quick" if args.quick else ""), "seeds": {}}
  for seed in args.seeds:
    rec = runs.get((chash, seed))
    workdir = os.path.join(args.workdir, f"{name}_seed{seed}")
    ckpt = os.path.join(workdir, "checkpoints", str(rec["steps"])) if rec else None
    if rec is None or not os.path.isdir(ckpt):
      raise SystemExit(
          f"ablations: --softmax-readout needs the finished {name} run of seed {seed}: "
          + (f"no record in {os.path.join(args.out, 'runs')}" if rec is None else
             f"its checkpoint {ckpt} is gone (run it again with --only mask_loss "
             f"--variants {name} --force --workdir {args.workdir})"))
    config = load_variant(name, args.quick, args.data_dir)
    config.seed = seed
    config.num_sample_images = 0
    config.model.roi_heads.mask.softmax_readout = "foreground"
    m = evaluate.evaluate_workdir(config, workdir)
    keys = ("segm/AP", "segm/AP75", "bbox/AP")
    out["seeds"][str(seed)] = {"class": {k: rec["metrics"].get(k) for k in keys},
                               "foreground": {k: m.get(k) for k in keys}}
    print(f"[ablations] {name} seed {seed}: mask AP {rec['metrics'].get('segm/AP'):.1f} "
          f"(detected class) -> {m.get('segm/AP'):.1f} (1 - p(background))", flush=True)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, SOFTMAX_READOUT_FILE), "w") as f:
    json.dump(out, f, indent=1)
  return out


def softmax_readout_lines(out: str) -> list[str]:
  path = os.path.join(out, SOFTMAX_READOUT_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    t = json.load(f)
  cls = summarize([v["class"]["segm/AP"] for v in t["seeds"].values()])
  fg = summarize([v["foreground"]["segm/AP"] for v in t["seeds"].values()])
  return [f"The softmax runs' masks read as 1 - p(background) instead of the detected "
          f"class's probability (same checkpoints, seeds {', '.join(t['seeds'])}): mask AP "
          f"{fmt(*cls[:2])} -> {fmt(*fg[:2])} (`{t['command']}`, {t['machine']}, "
          f"{t['date']}, commit {t['commit']}).", ""]


# ============================================================================
# Report: ablations.md and ablations.png
# ============================================================================

def load_runs(out: str) -> dict:
  """{(config_hash, seed): record} of every finished run in ``out``."""
  runs = {}
  d = os.path.join(out, "runs")
  for name in sorted(os.listdir(d)) if os.path.isdir(d) else ():
    if name.endswith(".json"):
      with open(os.path.join(d, name)) as f:
        r = json.load(f)
      runs[(r["config_hash"], r["seed"])] = r
  return runs


def summarize(values):
  """(mean, sample standard deviation or None, n) of the non-missing values."""
  vals = [v for v in values if v is not None]
  if not vals:
    return None, None, 0
  sd = statistics.stdev(vals) if len(vals) > 1 else None
  return statistics.fmean(vals), sd, len(vals)


def fmt(mean, sd, digits=1) -> str:
  if mean is None:
    return "--"
  return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def variant_rows(group: str, runs: dict, quick: bool, seeds) -> list[dict]:
  rows = []
  for name in GROUPS[group][2]:
    chash = config_hash(load_variant(name, quick))
    recs = [runs[(chash, s)] for s in seeds if (chash, s) in runs]
    row = {"variant": name, "runs": recs, "n": len(recs)}
    for key, _ in COLUMNS:
      row[key] = summarize([r["metrics"].get(key) for r in recs])
    row["train_min"] = summarize([r["train_s"] / 60 for r in recs])
    row["infer_ms"] = summarize([r["infer_ms"] for r in recs])
    rows.append(row)
  return rows


def paper_cell(name: str) -> str:
  label, *vals = PAPER[name]
  mask = " / ".join("--" if v is None else f"{v:.1f}" for v in vals[:3])
  box = "--" if vals[3] is None else f"{vals[3]:.1f}"
  return f"{label}: {mask}; box {box}"


def write_report(out: str, groups, seeds, quick: bool = False) -> str:
  runs = load_runs(out)
  tables = {g: variant_rows(g, runs, quick, seeds) for g in groups}
  recs = [r for rows in tables.values() for row in rows for r in row["runs"]]
  lines = ["# Mask R-CNN ablations on the shapes dataset", ""]
  if not recs:
    lines += ["No finished runs yet.", ""]
  else:
    first = recs[0]
    lines += [
        f"Every variant trained {first['steps']} steps at batch {first['batch_size']} on "
        f"{first['canvas'][0]}x{first['canvas'][1]} shapes images with seeds "
        f"{', '.join(str(s) for s in seeds)}, then evaluated on the "
        f"{first['num_validation']} validation images with pycocotools. Figures are the mean ± sample standard deviation over the "
        "seeds (n per row). Train time is the wall time of the training run (compilation "
        "and input pipeline included); inference is the median of jitted calls on one "
        "image (compilation excluded). Both are wall times on a 2-core machine that "
        "other jobs may have shared while a run trained, so compare them only loosely; "
        "the mask branch's cost is measured on its own (R50-FPN, below the mask_branch "
        "table). The paper's COCO figures (ResNet-50; mask AP / "
        "AP50 / AP75; box AP) are beside them for the ordering, not for the values.",
        "",
        "Made by:",
        "",
    ]
    for cmd in sorted({r["command"] for r in recs}):
      lines.append(f"    {cmd}")
    lines += ["", "Machine: " + "; ".join(sorted({r["machine"] for r in recs})),
              "Commits: " + ", ".join(sorted({r["commit"] for r in recs})),
              "Dates: " + ", ".join(sorted({r["date"] for r in recs})), ""]
  for g in groups:
    title, table, _ = GROUPS[g]
    lines += [f"## {g}: {title} (paper {table})", "",
              "| variant | mask AP | AP50 | AP75 | box AP | train (min) | inference (ms/img) "
              "| n | paper |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in tables[g]:
      cells = [row["variant"]] + [fmt(*row[k][:2]) for k, _ in COLUMNS]
      cells += [fmt(*row["train_min"][:2]), fmt(*row["infer_ms"][:2]), str(row["n"]),
                paper_cell(row["variant"])]
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if g == "mask_loss":
      lines += softmax_readout_lines(out)
  r50 = os.path.join(out, "mask_branch_r50.json")
  if "mask_branch" in groups and os.path.exists(r50):
    with open(r50) as f:
      t = json.load(f)
    lines += [f"Mask-branch cost at the paper's scale: R50-FPN inference, "
              f"{t['canvas'][0]}x{t['canvas'][1]}, batch 1, median of {t['runs']}: "
              f"Mask R-CNN {t['mask_rcnn_ms']:.0f} ms, Faster R-CNN {t['faster_rcnn_ms']:.0f} "
              f"ms: the mask branch costs {100 * t['mask_branch_cost']:.0f}% "
              f"(`{t['command']}`, {t['machine']}, {t['date']}, commit {t['commit']}).", ""]
  text = "\n".join(lines)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "ablations.md"), "w") as f:
    f.write(text)
  plot(tables, os.path.join(out, "ablations.png"))
  return text


def plot(tables: dict, path: str) -> None:
  """One panel per group: mask AP and box AP per variant, error bars the
  standard deviation over seeds. Needs matplotlib (``pip install
  '.[ablations]'``); without it the report has no figure, and says so."""
  try:
    import matplotlib
  except ImportError:
    print(f"[ablations] matplotlib is not installed (pip install '.[ablations]'): "
          f"{path} not written")
    return
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  groups = list(tables)
  fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.6), squeeze=False)
  for ax, g in zip(axes[0], groups):
    rows = tables[g]
    xs = range(len(rows))
    for offset, (key, label, colour) in enumerate((("segm/AP", "mask AP", "tab:blue"),
                                                   ("bbox/AP", "box AP", "tab:orange"))):
      means = [r[key][0] or 0.0 for r in rows]
      sds = [r[key][1] or 0.0 for r in rows]
      ax.bar([x + (offset - 0.5) * 0.38 for x in xs], means, 0.38, yerr=sds, capsize=3,
             label=label, color=colour)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["variant"].split("_", 1 if g != "mask_branch" else 2)[-1]
                        for r in rows], rotation=20)
    ax.set_title(g)
    ax.set_ylim(0, 100)
  axes[0][0].set_ylabel("AP (shapes validation)")
  axes[0][0].legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ============================================================================
# Command line
# ============================================================================

def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--only", default=",".join(GROUPS),
                 help=f"comma-separated groups, of {', '.join(GROUPS)}")
  p.add_argument("--variants", default="",
                 help="comma-separated variants of those groups to run (default: all)")
  p.add_argument("--seeds", default="0,1", help="comma-separated seeds (>= 2 for a spread)")
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "ablations"),
                 help="run records, ablations.md and ablations.png")
  p.add_argument("--workdir", default="/tmp/mrcnn_ablations", help="training workdirs")
  p.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
  p.add_argument("--infer-runs", type=int, default=20, help="timed inference calls per run")
  p.add_argument("--quick", action="store_true",
                 help="tiny model, tiny dataset, 2 steps (a check of the machinery)")
  p.add_argument("--report", action="store_true", help="only rebuild ablations.md / .png")
  p.add_argument("--r50-timing", action="store_true",
                 help="only time R50-FPN inference with and without the mask branch")
  p.add_argument("--softmax-readout", action="store_true",
                 help="only evaluate the finished mask_loss_softmax runs (checkpoints in "
                      "--workdir) with masks read as 1 - p(background)")
  p.add_argument("--force", action="store_true", help="retrain runs that are already done")
  args = p.parse_args(argv)
  args.groups = [g.strip() for g in args.only.split(",") if g.strip()]
  unknown = sorted(set(args.groups) - set(GROUPS))
  if unknown:
    p.error(f"unknown group(s) {unknown}; choose from {list(GROUPS)}")
  args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  known = {v for g in args.groups for v in GROUPS[g][2]}
  if set(args.variants) - known:
    p.error(f"unknown variant(s) {sorted(set(args.variants) - known)} for groups "
            f"{args.groups}; choose from {sorted(known)}")
  args.seeds = [int(s) for s in args.seeds.split(",")]
  return args


def _what(argv):
  """The arguments that say what was run (not where files went)."""
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
    elif a in ("--out", "--workdir", "--data-dir"):
      skip = True
    elif not a.startswith(("--out=", "--workdir=", "--data-dir=")):
      out.append(a)
  return out


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.r50_timing:
    r50_timing(args)
    return
  if args.softmax_readout:
    softmax_readout(args)
  if not (args.report or args.softmax_readout):
    command = "python scripts/ablations.py " + " ".join(shlex.quote(a) for a in _what(argv))
    for g in args.groups:
      run_group(g, args, command.strip())
  print(write_report(args.out, list(GROUPS), args.seeds, args.quick))


if __name__ == "__main__":
  main()
