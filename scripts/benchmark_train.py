"""Train-step speed of mrcnn_jax's R50-FPN Mask R-CNN next to torchvision's.

One run times both frameworks, each in a child process of its own (so their
thread pools and allocators do not meet and each gets its own peak memory),
on the same synthetic batch: the same images, boxes, labels and masks,
generated with numpy from --seed. Per framework it reports the first step
(trace + compile + one step), the median step time over --runs steps after
one warm-up step, images/s, and peak memory (device memory statistics on a
GPU, peak resident set size of the process on a CPU). Each child prints one
JSON line; the parent prints a table, the time ratio and, last, one JSON line
with everything (also written to --out).

  * mrcnn_jax: the train step that ``mrcnn-jax train`` runs
    (``train.train_step`` under ``jax.pmap`` on one device: value_and_grad of
    the five named losses, SGD with momentum and weight decay), for --config
    (default: Detectron2's 1x recipe, ``experiments/mask_rcnn_r50_fpn_1x.py``:
    R50-FPN, frozen BN, stem + layer1 frozen, 512 RoIs/image at 25% positive).
    ``--precision mixed`` sets ``config.model.dtype = "bfloat16"``.
  * torchvision: ``MaskRCNN`` with the same backbone settings (ResNet-50 with
    ``FrozenBatchNorm2d``, ``trainable_layers=3``, 81 classes, min/max size
    equal to the canvas so its transform does not resize),
    ``torch.optim.SGD`` with the same hyper-parameters; loss.backward() and
    optimizer.step() timed together. ``--precision mixed`` wraps the forward
    in ``torch.autocast`` (bfloat16 on CPU, float16 with a GradScaler on CUDA).

Both start from random weights (their own initialisations). Each side's
number of positive RoIs per image -- the RoIs its mask head computes on -- is
reported, since it decides the mask head's cost on the torchvision side.

Run it from the repository root in the torch reference environment (torch,
torchvision, jax and mrcnn_jax; see ``check_torchvision_parity.py``), or in
the project environment for mrcnn_jax alone (``--framework jax``):

  python scripts/benchmark_train.py --runs 5                       # both, CPU
  python scripts/benchmark_train.py --framework jax --profile      # stages
  python scripts/benchmark_train.py --batch 8 --canvas 800x1344 --boxes 24 \\
      --precision mixed                                             # COCO scale

--profile times the train step's stages on their own (each jitted, forward
and backward where the stage has parameters): backbone + FPN, RPN head and
losses, proposals and all targets (no gradient), box branch (RoIAlign, box
head, box losses), mask branch (RoIAlign, mask head, mask loss), and the
optimizer update. Their sum approximates the whole step.

No TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import numpy as np

from bench_common import (import_torch, jax_device_description, median_seconds,
                          peak_rss_bytes, print_json_line, usable_cores)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


# ============================================================================
# The synthetic batch (numpy only: both frameworks read the same arrays)
# ============================================================================

def make_batch(batch: int, canvas: tuple[int, int], num_boxes: int, num_classes: int,
               seed: int, gt_mask_size: int):
  """Images in [0, 1] [B, H, W, 3]; per image ``num_boxes`` boxes (sides 20 to
  140 px, xyxy), labels in 1..num_classes-1 and ellipse masks inscribed in the
  boxes: full-size [B, N, H, W] uint8 for torchvision and [B, N, S, S] crops to
  the boxes for mrcnn_jax (crop pixel k centred at x1 + (k + 0.5) * w / S, the
  pipeline's convention), evaluated from the same ellipse."""
  h, w = canvas
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 1, (batch, h, w, 3)).astype(np.float32)
  sides = rng.uniform(20, 140, (batch, num_boxes, 2))
  x1 = rng.uniform(0, w - sides[..., 0])
  y1 = rng.uniform(0, h - sides[..., 1])
  boxes = np.stack([x1, y1, x1 + sides[..., 0], y1 + sides[..., 1]], -1).astype(np.float32)
  labels = rng.integers(1, num_classes, (batch, num_boxes)).astype(np.int32)

  def ellipse(u, v):  # u, v in box-relative [0, 1] coordinates
    return ((u - 0.5) ** 2 + (v - 0.5) ** 2) <= 0.25

  ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
  full = np.zeros((batch, num_boxes, h, w), np.uint8)
  k = (np.arange(gt_mask_size) + 0.5) / gt_mask_size
  crops = np.broadcast_to(ellipse(k[None, :], k[:, None]),
                          (batch, num_boxes, gt_mask_size, gt_mask_size)).astype(np.uint8)
  for b in range(batch):
    for n in range(num_boxes):
      bx1, by1, bx2, by2 = boxes[b, n]
      u = (xs - bx1) / (bx2 - bx1)
      v = (ys - by1) / (by2 - by1)
      full[b, n] = ellipse(u[None, :], v[:, None]) & (u[None, :] >= 0) & (u[None, :] <= 1) \
          & (v[:, None] >= 0) & (v[:, None] <= 1)
      # Paint the object into the image so the batch is not pure noise.
      images[b][full[b, n].astype(bool)] = rng.uniform(0, 1, 3)
  return {"images": images, "boxes": boxes, "labels": labels, "masks_full": full,
          "masks_crop": np.ascontiguousarray(crops)}


def load_config(path: str, overrides: list[str]):
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
  import importlib.util
  spec = importlib.util.spec_from_file_location("bench_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  # The CLI's rule: an unknown key or a mistyped value stops with the key
  # named (a plain ConfigDict assignment would add a misspelt field silently).
  from mrcnn_jax.cli import apply_overrides
  return apply_overrides(config, [f"--config.{item}" for item in overrides])


# ============================================================================
# mrcnn_jax
# ============================================================================

def run_jax(args) -> dict:
  import jax

  from mrcnn_jax.model import layers
  if args.chunk_backends is not None:  # where roi_heads.<head>.chunk applies
    layers.CHUNK_BACKENDS = tuple(b for b in args.chunk_backends.split(",") if b)
  if args.nms != "auto":  # bind the method where the model calls NMS (nms_batch only)
    from mrcnn_jax.ops import nms as nms_ops
    from mrcnn_jax.ops import postprocess
    postprocess.nms_batch = functools.partial(nms_ops.nms_batch, method=args.nms)

  from mrcnn_jax import train as train_lib
  from mrcnn_jax.input_spec import IMAGENET_MEAN, IMAGENET_STD

  config = load_config(args.config, args.set)
  if args.precision == "mixed":
    config.model.dtype = "bfloat16"
  data = make_batch(args.batch, args.canvas, args.boxes, config.model.num_classes, args.seed,
                    config.data.gt_mask_size)
  b = args.batch
  images = (data["images"] - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(
      IMAGENET_STD, np.float32)
  g = config.data.max_instances
  if args.boxes > g:
    raise SystemExit(f"--boxes {args.boxes} > config.data.max_instances {g}")
  pad = lambda a: np.concatenate(  # noqa: E731
      [a, np.zeros((b, g - args.boxes) + a.shape[2:], a.dtype)], axis=1)
  batch = {
      "image": images,
      "image_size": np.tile(np.asarray([args.canvas], np.int32), (b, 1)),
      "gt_boxes": pad(data["boxes"]),
      "gt_labels": pad(data["labels"]),
      "gt_valid": pad(np.ones((b, args.boxes), bool)),
      "gt_masks": pad(data["masks_crop"]),
  }
  n = args.devices
  if len(jax.local_devices()) < n:
    raise SystemExit(
        f"--devices {n}: only {len(jax.local_devices())} {jax.default_backend()} device(s) "
        "here (on a CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)")
  if b % n:
    raise SystemExit(f"--batch {b} is not divisible by --devices {n}")
  batch = {k: v.reshape((n, b // n) + v.shape[1:]) for k, v in batch.items()}  # [N, B/N, ...]

  devices = jax.local_devices()[:n]
  from mrcnn_jax import experiment
  from mrcnn_jax.model import variables_template
  model = experiment.build_model(config)
  tx = train_lib.make_optimizer(config, variables_template(model)["params"], model)
  state = train_lib.create_train_state(config, jax.random.PRNGKey(args.seed), model, tx)
  if args.profile_only:  # the stages alone, without the whole step
    return {"framework": "mrcnn_jax", "jax_version": jax.__version__,
            "device": jax_device_description(), "precision": args.precision,
            "batch": b // n,
            "stages_s": profile_jax(model, state, tx, config,
                                    {k: jax.device_put(v[0]) for k, v in batch.items()}, args.runs)}
  p_step = train_lib.make_p_train_step(model, tx, config.loss_weights)
  pstate = train_lib.replicate(state, devices)
  prng = train_lib.replicate(jax.random.PRNGKey(1), devices)
  batch = jax.pmap(lambda x: x, devices=devices)(batch)  # on the device, once

  def step():
    nonlocal pstate
    pstate, metrics = p_step(pstate, batch, prng)
    return jax.block_until_ready(metrics)

  t0 = time.perf_counter()
  metrics = step()
  compile_s = time.perf_counter() - t0
  med, times = median_seconds(step, args.runs)
  metrics = jax.device_get(step())
  out = {
      "framework": "mrcnn_jax", "jax_version": jax.__version__,
      "device": jax_device_description(),
      "precision": "bfloat16 compute, float32 params" if args.precision == "mixed" else "float32",
      "compile_s": round(compile_s, 2), "step_s": round(med, 4),
      "step_times_s": [round(t, 4) for t in times],
      "devices": n, "nms": args.nms, "chunk_backends": list(layers.CHUNK_BACKENDS),
      "images_per_s": round(b / med, 3),
      "loss": float(metrics["loss"][0]),
      "pos_rois_per_image": float(metrics["num_pos_rois"][0]),
      "mask_rois_per_step": model.num_mask_slots(b // n) * n,
      "mask_rois_left_out": float(metrics["num_mask_rois_left_out"][0]),
  }
  dev = jax.local_devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    out["peak_device_memory_gib"] = round(stats["peak_bytes_in_use"] / 2**30, 3)
  out["peak_rss_gib"] = round(peak_rss_bytes() / 2**30, 3)
  if args.profile:
    # The whole step's figures first (stderr), in case the stages are cut short.
    print(json.dumps(out), file=sys.stderr, flush=True)
    out["stages_s"] = profile_jax(model, train_lib.unreplicate(pstate), tx, config,
                                  jax.tree.map(lambda x: x[0], batch), args.runs)
  return out


def profile_jax(model, state, tx, config, batch, runs) -> dict:
  """Median seconds of each stage of the train step jitted on its own."""
  import jax
  import jax.numpy as jnp
  import optax

  from mrcnn_jax import train as train_lib
  from mrcnn_jax.ops import losses as loss_ops

  params = state.params
  images = jnp.asarray(batch["image"])
  sizes = jnp.asarray(batch["image_size"])
  canvas = tuple(images.shape[1:3])
  rng = jax.random.PRNGKey(0)
  apply = lambda p, *a, **k: model.apply({"params": p}, *a, **k)  # noqa: E731
  gt = train_lib.batch_ground_truth(batch)
  # Every array reaches the stage programs as an argument (``d``), never as
  # a closed-over constant: XLA would constant-fold the proposals' top-k
  # over the captured RPN outputs, for minutes at COCO scale.
  full = jax.jit(lambda p, x, s, g: apply(p, x, s, g, rng, method=model.train_outputs))
  t0 = time.perf_counter()
  outs = jax.block_until_ready(full(params, images, sizes, gt))
  print(f"  (the model's train outputs, first call {time.perf_counter() - t0:.1f} s)",
        file=sys.stderr, flush=True)
  feats = jax.jit(lambda p, x: apply(p, x, method=model.features))(params, images)
  objectness, rpn_deltas = jax.jit(lambda p, f: apply(p, f, method=model.rpn_outputs))(params, feats)
  mask_rois_n = f"{outs['mask_logits'].shape[0]} slots, {int(outs['mask_valid'].sum())} filled"
  d = {"images": images, "sizes": sizes, "gt": {k: jnp.asarray(v) for k, v in gt.items()},
       "objectness": objectness, "rpn_deltas": rpn_deltas, "outs": outs,
       "grads": jax.tree.map(jnp.ones_like, params)}  # any gradient: the update costs the same

  def features_sum(p, d):
    return sum(f.astype(jnp.float32).sum() for f in apply(p, d["images"], train=True,
                                                          method=model.features))

  def rpn_loss(p, f, d):
    # As in the step: the dense head's forward (the proposals read it, no
    # gradient; returned so that it is computed) and the losses at the
    # sampled anchors (``RPN.at_anchors``), which carry the gradient.
    obj, deltas = apply(p, f, method=model.rpn_outputs)
    o = d["outs"]
    lg, dl = apply(p, f, o["rpn_sampled_index"], method=lambda m, *a: m.rpn.at_anchors(*a))
    loss = sum(loss_ops.rpn_losses(lg, dl, o["rpn_sampled_labels"],
                                   o["rpn_sampled_target_deltas"]))
    return loss, jax.lax.stop_gradient(sum(x.sum() for x in obj + deltas))

  def targets(p, f, d):
    # Everything between the heads that has no parameters: anchors, RPN
    # targets, proposals (top-k, decode, NMS), RoI sampling, mask targets.
    out = apply(p, f, canvas, d["sizes"].astype(jnp.float32), d["objectness"],
                d["rpn_deltas"], d["gt"], rng, jnp.arange(images.shape[0]),
                method=model.sample_targets)
    return jax.tree.map(jnp.sum, out)

  def box_loss(p, f, d):
    o = d["outs"]
    logits, deltas = apply(p, f, o["roi_boxes"], canvas, method=model.box_outputs)
    return sum(loss_ops.box_losses(logits, deltas, o["roi_labels"], o["roi_target_deltas"],
                                   o["roi_is_pos"], o["roi_valid"]))

  def mask_loss(p, f, d):
    o = d["outs"]
    logits = apply(p, f, o["mask_rois"], canvas, o["mask_batch_index"], True,
                   o["mask_valid"].sum(), method=model.mask_outputs)
    return loss_ops.mask_loss(logits, o["mask_labels"], o["mask_targets"], o["mask_valid"],
                              o["mask_batch_index"], images.shape[0])

  def update(p, o, d):
    u, o = tx.update(d["grads"], o, p)
    return optax.apply_updates(p, u), o

  grad2 = lambda f, **k: jax.jit(jax.grad(f, argnums=(0, 1), **k))  # noqa: E731
  stages = {
      "backbone+fpn fwd+bwd": (jax.jit(jax.grad(features_sum)), (params, d)),
      "rpn head+losses fwd+bwd": (grad2(rpn_loss, has_aux=True), (params, feats, d)),
      "box branch fwd+bwd": (grad2(box_loss), (params, feats, d)),
      f"mask branch fwd+bwd ({mask_rois_n})": (grad2(mask_loss), (params, feats, d)),
      "optimizer update": (jax.jit(update), (params, state.opt_state, d)),
      "proposals+targets fwd": (jax.jit(targets), (params, feats, d)),
  }
  result = {}
  for name, (fn, fargs) in stages.items():
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*fargs))
    first = time.perf_counter() - t0
    med, _ = median_seconds(lambda: jax.block_until_ready(fn(*fargs)), runs)
    result[name] = round(med, 4)
    print(f"  {name:<40} {med:8.3f} s  (first call {first:.1f} s)", file=sys.stderr, flush=True)
  result["sum of stages"] = round(sum(result.values()), 4)
  return result


# ============================================================================
# torchvision
# ============================================================================

def run_torch(args) -> dict:
  tv, reason = import_torch()
  if tv is None:
    return {"framework": "torchvision", "skipped": reason}
  torch, torchvision = tv
  from torchvision.models.detection import MaskRCNN
  from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
  from torchvision.ops.misc import FrozenBatchNorm2d

  config = load_config(args.config, args.set)
  cuda = torch.cuda.is_available()
  dev = torch.device("cuda" if cuda else "cpu")
  torch.manual_seed(args.seed)
  backbone = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
  backbone = _resnet_fpn_extractor(backbone, 3)
  h, w = args.canvas
  m = config.model
  model = MaskRCNN(
      backbone, num_classes=m.num_classes, min_size=min(h, w), max_size=max(h, w),
      rpn_pre_nms_top_n_train=m.rpn.pre_nms_topk_train,
      rpn_post_nms_top_n_train=m.rpn.post_nms_topk_train,
      rpn_batch_size_per_image=m.rpn.batch_per_image,
      box_batch_size_per_image=m.roi_heads.batch_per_image,
      box_positive_fraction=m.roi_heads.positive_fraction).to(dev).train()
  o = config.optimizer
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.SGD(params, lr=o.base_lr * o.warmup_factor, momentum=o.momentum,
                        weight_decay=o.weight_decay)
  data = make_batch(args.batch, args.canvas, args.boxes, m.num_classes, args.seed,
                    config.data.gt_mask_size)
  images = [torch.from_numpy(im).permute(2, 0, 1).contiguous().to(dev)
            for im in data["images"]]
  targets = [{"boxes": torch.from_numpy(data["boxes"][i]).to(dev),
              "labels": torch.from_numpy(data["labels"][i]).long().to(dev),
              "masks": torch.from_numpy(data["masks_full"][i]).to(dev)}
             for i in range(args.batch)]
  mixed = args.precision == "mixed"
  amp_dtype = torch.float16 if cuda else torch.bfloat16
  scaler = torch.amp.GradScaler("cuda") if (mixed and cuda) else None
  num_pos = []

  # Count the positive RoIs the mask head sees (torchvision's own sampling).
  from torchvision.models.detection import roi_heads as tv_roi_heads
  orig = tv_roi_heads.RoIHeads.select_training_samples

  def counting(self, proposals, targets_):
    out = orig(self, proposals, targets_)
    num_pos.append([int((lab > 0).sum()) for lab in out[2]])
    return out
  tv_roi_heads.RoIHeads.select_training_samples = counting

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=amp_dtype, enabled=mixed):
      losses = model(images, targets)
      loss = sum(losses.values())
    if scaler is not None:
      scaler.scale(loss).backward()
      scaler.step(opt)
      scaler.update()
    else:
      loss.backward()
      opt.step()
    if cuda:
      torch.cuda.synchronize()
    return float(loss)

  if cuda:
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  step()
  first_s = time.perf_counter() - t0
  med, times = median_seconds(step, args.runs)
  loss = step()
  pos = np.mean(num_pos[-1])
  out = {
      "framework": "torchvision", "torch_version": torch.__version__,
      "torchvision_version": torchvision.__version__,
      "device": (torch.cuda.get_device_name() if cuda else
                 f"cpu ({torch.get_num_threads()} intra-op threads)"),
      "precision": (f"autocast {str(amp_dtype).split('.')[-1]}" if mixed else "float32"),
      "compile_s": round(first_s, 2), "step_s": round(med, 4),
      "step_times_s": [round(t, 4) for t in times],
      "images_per_s": round(args.batch / med, 3), "loss": loss,
      "pos_rois_per_image": float(pos),
  }
  if cuda:
    out["peak_device_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
  out["peak_rss_gib"] = round(peak_rss_bytes() / 2**30, 3)
  return out


# ============================================================================
# Driver
# ============================================================================

def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--framework", choices=("both", "jax", "torch"), default="both")
  p.add_argument("--config", default=os.path.join(ROOT, "experiments",
                                                  "mask_rcnn_r50_fpn_1x.py"))
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override as mrcnn-jax's --config.KEY=VALUE (a Python literal), "
                      "e.g. --set model.roi_heads.batch_per_image=256")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--canvas", default="512x512", help="HxW, multiples of 32")
  p.add_argument("--boxes", type=int, default=4, help="objects per image")
  p.add_argument("--devices", type=int, default=1,
                 help="mrcnn_jax: split the batch over this many devices (pmap); on a "
                      "CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N")
  p.add_argument("--precision", choices=("float32", "mixed"), default="float32")
  p.add_argument("--runs", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--profile", action="store_true", help="also time mrcnn_jax's stages")
  p.add_argument("--nms", choices=("auto", "sequential", "tiled"), default="auto",
                 help="mrcnn_jax: the NMS method of the proposals and detections "
                      "(ops/nms.py; all keep the same boxes)")
  p.add_argument("--chunk-backends", default=None, metavar="cpu,gpu",
                 help="mrcnn_jax: the backends on which the heads' chunk applies "
                      "(model.layers.CHUNK_BACKENDS, default cpu only)")
  p.add_argument("--profile-only", action="store_true",
                 help="time mrcnn_jax's stages and not the whole step")
  p.add_argument("--out", default=None, help="append the JSON line here")
  args = p.parse_args(argv)
  try:
    args.canvas = tuple(int(v) for v in args.canvas.lower().split("x"))
    assert len(args.canvas) == 2 and all(v % 32 == 0 and v > 0 for v in args.canvas)
  except (ValueError, AssertionError):
    p.error(f"--canvas must be HxW with multiples of 32, got {args.canvas!r}")
  if args.runs < 1 or args.batch < 1 or args.boxes < 1 or args.devices < 1:
    p.error("--runs, --batch, --boxes and --devices must be >= 1")
  return args


def drop_option(argv: list[str], name: str) -> list[str]:
  """``argv`` without ``name VALUE`` and ``name=VALUE``."""
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
    elif a == name:
      skip = True
    elif not a.startswith(name + "="):
      out.append(a)
  return out


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.framework in ("jax", "torch"):
    result = run_jax(args) if args.framework == "jax" else run_torch(args)
    print_json_line(result, args.out, append=True)
    return 0
  # both: one child process per framework, the same arguments otherwise
  rest = drop_option(argv, "--framework")
  results = []
  for fw in ("jax", "torch"):
    # The children write no --out of their own: the summary below holds both.
    child = drop_option(rest, "--out")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--framework", fw] + child,
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode:  # say so and still run the other framework
      print(f"the {fw} child failed (exit {proc.returncode})", file=sys.stderr)
      results.append({"framework": "mrcnn_jax" if fw == "jax" else "torchvision",
                      "skipped": f"failed with exit {proc.returncode}"})
      continue
    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  ours, theirs = results
  print(f"\ncanvas {args.canvas[0]}x{args.canvas[1]}, batch {args.batch}, {args.boxes} "
        f"objects/image, {args.precision}, {usable_cores()} usable cores, median of "
        f"{args.runs} steps after 1 warm-up")
  print(f"{'framework':<12} {'step s':>8} {'img/s':>7} {'first s':>8} {'peak GiB':>9} "
        f"{'pos RoIs/img':>13}")
  for r in results:
    if "skipped" in r:
      print(f"{r['framework']:<12} skipped: {r['skipped']}")
      continue
    peak = r.get("peak_device_memory_gib", r["peak_rss_gib"])
    print(f"{r['framework']:<12} {r['step_s']:>8.3f} {r['images_per_s']:>7.2f} "
          f"{r['compile_s']:>8.1f} {peak:>9.2f} {r['pos_rois_per_image']:>13.1f}")
  summary = {"batch": args.batch, "canvas": list(args.canvas), "boxes": args.boxes,
             "precision": args.precision, "runs": args.runs, "cpu_cores": usable_cores(),
             "mrcnn_jax": ours, "torchvision": theirs}
  if "skipped" not in theirs and "skipped" not in ours:
    summary["ratio_step_time_mrcnn_jax_over_torchvision"] = round(
        ours["step_s"] / theirs["step_s"], 3)
    print(f"mrcnn_jax / torchvision step time: {summary['ratio_step_time_mrcnn_jax_over_torchvision']:.2f}x")
  print_json_line(summary, args.out, append=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
