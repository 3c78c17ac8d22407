"""Inference latency and throughput of mrcnn_jax's R50-FPN Mask R-CNN next to
torchvision's, on whatever device each framework finds (CPU or one GPU).

Times, in one process on the same machine, with the same input and (when torch
is importable) the same weights:

  * mrcnn_jax: ``jax.jit(model.apply)(variables, images, image_sizes)`` for
    ``experiments/mask_rcnn_r50_fpn.py`` on a normalised [B, 800, 1088, 3]
    batch, outputs blocked with ``jax.block_until_ready``. The first call
    (trace + XLA compile + one run) is reported on its own as ``compile_s``;
    then 1 warm-up call and --runs timed calls -> median seconds per image.
  * torchvision: ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``
    in eval mode under ``torch.inference_mode()`` on the [0, 1] CHW float
    tensors of the same photograph (its transform resizes to short side 800,
    the identity at 800x1088, normalises and pads to 800x1088): 1 warm-up,
    --runs timed calls -> median seconds per image.

Torchvision's randomly initialised weights (``torch.manual_seed(0)``) are
converted into mrcnn_jax's (``mrcnn_jax.weights.convert_state_dict``), so both
models do the same work and return the same number of detections. Without
torch, mrcnn_jax runs on ``init_params``' random weights alone and the
torchvision column says it was skipped.

The input is one real photograph (scikit-image's ``astronaut`` or ``coffee``,
resized to 800x1088 (H x W)), repeated --batch times.

Run it in either environment, from the repository root:

  # side by side (the torch reference env: torch, torchvision, jax, mrcnn_jax)
  /work/tvenv/bin/python scripts/benchmark_inference.py --runs 5
  # mrcnn_jax alone (the project env, no torch)
  /work/venv/bin/python scripts/benchmark_inference.py --runs 5
  # options: --batch 2 --image coffee --out bench.json --profile

--profile also times the stages of both models (mrcnn_jax: each prefix of the
pipeline jitted on its own -- features, + RPN proposals, + box head and
detection, whole model; torchvision: transform, backbone, RPN, RoI heads,
postprocess) to show where the time goes.

--precision mixed runs mrcnn_jax with bfloat16 compute (``config.model.dtype``;
parameters, box decoding, RoIAlign coordinates and NMS stay float32) and
torchvision under ``torch.autocast`` (bfloat16 on a CPU, float16 on CUDA).

Prints a small table (latency per batch, seconds per image, images/s) and,
last, one JSON line with the figures, peak device memory on a GPU (also
written to --out if given). TensorFlow is not imported.

Caveat: these are figures for whatever device JAX and torch use here --
typically a CPU, where XLA:CPU and PyTorch's CPU kernels (oneDNN) are being
compared, with the thread counts printed. CPU figures say nothing about GPU
or TPU latency, where kernels, fusion and the relative cost of the
static-shape post-processing are entirely different; and on a shared machine
they depend on what else is running. Further differences in what is timed:
torchvision's figure includes its transform (normalise, resize, pad) and its
postprocess (pasting each mask into a full-size image mask); mrcnn_jax's
takes an already normalised canvas and returns M x M mask probabilities
(paste them with ``mrcnn_jax.ops.masks.paste_masks`` when needed). mrcnn_jax
always computes a fixed number of detection slots (detections_per_image,
flagged by ``valid``), whatever the number of real detections.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from bench_common import (cpu_name, import_torch, median_seconds, peak_rss_bytes,
                          print_json_line, usable_cores)

H, W = 800, 1088  # a multiple of 32 each; torchvision's resize is the identity


def load_image(name: str) -> np.ndarray:
  """[H, W, 3] float32 in [0, 1]: a scikit-image photograph resized to H x W."""
  from PIL import Image
  from skimage import data
  img = getattr(data, name)()
  img = Image.fromarray(img).resize((W, H), Image.BILINEAR)
  return np.asarray(img, np.float32) / 255.0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=5, help="timed runs per model")
  parser.add_argument("--batch", type=int, default=1, help="images per call")
  parser.add_argument("--image", choices=("astronaut", "coffee"), default="astronaut")
  parser.add_argument("--no-torch", action="store_true",
                      help="time mrcnn_jax only, even if torch is importable")
  parser.add_argument("--precision", choices=("float32", "mixed"), default="float32",
                      help="mixed: bfloat16 compute for mrcnn_jax (float32 params), "
                           "torch.autocast for torchvision (bfloat16 on CPU, float16 on CUDA)")
  parser.add_argument("--profile", action="store_true",
                      help="also time the stages of both models")
  parser.add_argument("--out", default=None, help="write the JSON figures here")
  args = parser.parse_args(argv)
  if args.runs < 1 or args.batch < 1:
    parser.error("--runs and --batch must be >= 1")

  import jax

  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
  sys.path.insert(0, os.path.join(root, "experiments"))
  import mask_rcnn_r50_fpn as exp
  from mrcnn_jax.model import build_model, init_params

  tv, skip_reason = (None, "--no-torch") if args.no_torch else import_torch()
  torch = torchvision = None
  if tv is not None:
    torch, torchvision = tv

  config = exp.get_config()
  mixed = args.precision == "mixed"
  if mixed:
    config.model.dtype = "bfloat16"
  image = load_image(args.image)  # [H, W, 3] in [0, 1]
  b = args.batch

  # --- models ----------------------------------------------------------------
  model = build_model(config.model)
  variables = init_params(model, jax.random.PRNGKey(0))
  tmodel = None
  tdev = None
  if torch is not None:
    from mrcnn_jax.weights import convert_state_dict
    tdev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    tmodel = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None).eval()
    variables = convert_state_dict(
        {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}, variables)
    tmodel = tmodel.to(tdev)
    weights = "torchvision maskrcnn_resnet50_fpn random init (seed 0), converted"
  else:
    weights = "mrcnn_jax init_params random init (PRNGKey(0))"
  variables = jax.device_put(variables)

  # --- inputs ----------------------------------------------------------------
  from mrcnn_jax.input_spec import IMAGENET_MEAN, IMAGENET_STD
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  images = jax.device_put(np.broadcast_to((image - mean) / std, (b, H, W, 3)).copy())
  image_sizes = jax.device_put(np.tile(np.asarray([[H, W]], np.int32), (b, 1)))

  jdev = jax.devices()[0]
  device = f"{jdev.platform}:{jdev.device_kind}"
  if jdev.platform == "cpu":
    device += f" ({cpu_name()}, {usable_cores()} usable cores)"
  print(f"device: {device}; jax {jax.__version__}"
        + (f"; torch {torch.__version__}, torchvision {torchvision.__version__}"
           f" ({torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()}"
           " inter-op threads)" if torch is not None else
           f"; torchvision skipped ({skip_reason})"))
  print(f"input: {args.image} resized to {H}x{W}, batch {b}; weights: {weights}; "
        f"{args.runs} timed runs after 1 warm-up")
  if os.environ.get("XLA_FLAGS"):
    print(f"XLA_FLAGS={os.environ['XLA_FLAGS']}")

  # --- mrcnn_jax ---------------------------------------------------------------
  infer = jax.jit(model.apply)
  t0 = time.perf_counter()
  out = jax.block_until_ready(infer(variables, images, image_sizes))
  compile_s = time.perf_counter() - t0
  ours_s, ours_times = median_seconds(
      lambda: jax.block_until_ready(infer(variables, images, image_sizes)), args.runs)
  ours_dets = [int(n) for n in np.asarray(out["valid"]).sum(axis=1)]
  print(f"mrcnn_jax: first call (trace + compile + 1 run) {compile_s:.2f} s; runs "
        + ", ".join(f"{t:.3f}" for t in ours_times) + " s")

  # --- torchvision -------------------------------------------------------------
  tv_s = tv_times = tv_dets = None
  if tmodel is not None:
    timgs = [torch.from_numpy(image).permute(2, 0, 1).contiguous().to(tdev) for _ in range(b)]
    amp_dtype = torch.float16 if tdev.type == "cuda" else torch.bfloat16

    def tv_call():
      with torch.autocast(tdev.type, dtype=amp_dtype, enabled=mixed):
        out = tmodel(timgs)
      if tdev.type == "cuda":
        torch.cuda.synchronize()
      return out
    with torch.inference_mode():
      if tdev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
      tv_s, tv_times = median_seconds(tv_call, args.runs)
      tv_dets = [len(o["boxes"]) for o in tv_call()]
    print("torchvision: runs " + ", ".join(f"{t:.3f}" for t in tv_times) + " s")

  # --- stages (optional) ---------------------------------------------------------
  stages = None
  if args.profile:
    stages = profile_stages(model, variables, images, image_sizes, tmodel, torch,
                            timgs if tmodel is not None else None, args.runs)

  # --- report ----------------------------------------------------------------
  rows = [("mrcnn_jax", ours_s, ours_dets, f"{compile_s:.2f}")]
  if tv_s is not None:
    rows.append(("torchvision", tv_s, tv_dets, "-"))
  print()
  print(f"{'model':<13} {'latency s/batch':>15} {'s/img':>7} {'img/s':>7} {'compile s':>10}"
        "  detections per image")
  for name, s, dets, comp in rows:
    print(f"{name:<13} {s:>15.3f} {s / b:>7.3f} {b / s:>7.2f} {comp:>10}  {dets}")
  if tv_s is not None:
    ratio = ours_s / tv_s
    print(f"mrcnn_jax / torchvision time: {ratio:.2f}x")
  else:
    print(f"torchvision skipped: {skip_reason}")

  figures = {
      "device": device,
      "jax_version": jax.__version__,
      "torch_version": None if torch is None else torch.__version__,
      "torchvision_version": None if torch is None else torchvision.__version__,
      "torch_threads": None if torch is None else torch.get_num_threads(),
      "torch_interop_threads": None if torch is None else torch.get_num_interop_threads(),
      "cpu_cores": usable_cores(),
      "image": args.image,
      "canvas": [H, W],
      "batch": b,
      "precision": args.precision,
      "runs": args.runs,
      "weights": weights,
      "s_per_img_mrcnn_jax": round(ours_s / b, 4),
      "s_per_img_torchvision": None if tv_s is None else round(tv_s / b, 4),
      "latency_s_per_batch_mrcnn_jax": round(ours_s, 4),
      "latency_s_per_batch_torchvision": None if tv_s is None else round(tv_s, 4),
      "images_per_s_mrcnn_jax": round(b / ours_s, 3),
      "images_per_s_torchvision": None if tv_s is None else round(b / tv_s, 3),
      "ratio_mrcnn_jax_over_torchvision": None if tv_s is None else round(ours_s / tv_s, 3),
      "compile_s": round(compile_s, 2),
      "detections_mrcnn_jax": ours_dets,
      "detections_torchvision": tv_dets,
      "torchvision_skipped": skip_reason,
  }
  jstats = jdev.memory_stats() if jdev.platform != "cpu" else None
  if jstats and "peak_bytes_in_use" in jstats:
    figures["peak_device_memory_gib_mrcnn_jax"] = round(jstats["peak_bytes_in_use"] / 2**30, 3)
  if tdev is not None and tdev.type == "cuda":
    figures["peak_device_memory_gib_torchvision"] = round(
        torch.cuda.max_memory_allocated() / 2**30, 3)
  if jdev.platform == "cpu":  # one process: the peak of both models together
    figures["peak_rss_gib_process"] = round(peak_rss_bytes() / 2**30, 3)
  if stages is not None:
    figures["stages_s"] = stages
  print_json_line(figures, args.out)
  return 0


def profile_stages(model, variables, images, image_sizes, tmodel, torch, timgs, runs):
  """Median seconds of cumulative prefixes of both pipelines (not per image)."""
  import jax
  import jax.numpy as jnp

  canvas = tuple(images.shape[1:3])

  def upto_features(m, x, s):
    return m.features(x)

  def upto_proposals(m, x, s):
    feats = m.features(x)
    obj, deltas = m.rpn_outputs(feats)
    return m.proposals(feats, canvas, s.astype(jnp.float32), obj, deltas)

  def upto_detections(m, x, s):
    s = s.astype(jnp.float32)
    feats = m.features(x)
    obj, deltas = m.rpn_outputs(feats)
    props = m.proposals(feats, canvas, s, obj, deltas)
    logits, box_deltas = m.box_outputs(feats, props["boxes"], canvas)
    return m.box_head.detect(logits, box_deltas, props, s)

  out = {}
  print("\nstages, cumulative, median s per call (delta) (mrcnn_jax first call s):")
  prev = 0.0
  for name, method in (("features", upto_features), ("+rpn_proposals", upto_proposals),
                       ("+box_head_detect", upto_detections), ("+mask_head (whole)", None)):
    fn = jax.jit(lambda v, x, s, _m=method: model.apply(v, x, s, method=_m)
                 if _m is not None else model.apply(v, x, s))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(variables, images, image_sizes))
    comp = time.perf_counter() - t0
    med, _ = median_seconds(lambda: jax.block_until_ready(fn(variables, images, image_sizes)),
                            runs)
    out[f"mrcnn_jax {name}"] = round(med, 4)
    print(f"  mrcnn_jax   {name:<20} {med:8.3f}  ({med - prev:+.3f})  ({comp:.1f})")
    prev = med

  if tmodel is not None:
    with torch.inference_mode():
      state = {}

      def t_transform():
        state["il"], _ = tmodel.transform(timgs)

      def t_backbone():
        state["f"] = tmodel.backbone(state["il"].tensors)

      def t_rpn():
        state["p"], _ = tmodel.rpn(state["il"], state["f"])

      def t_roi():
        state["d"], _ = tmodel.roi_heads(state["f"], state["p"], state["il"].image_sizes)

      def t_post():
        tmodel.transform.postprocess(state["d"], state["il"].image_sizes,
                                     [tuple(t.shape[-2:]) for t in timgs])

      for name, fn in (("transform", t_transform), ("backbone+fpn", t_backbone),
                       ("rpn", t_rpn), ("roi_heads", t_roi), ("postprocess", t_post)):
        med, _ = median_seconds(fn, runs)
        out[f"torchvision {name}"] = round(med, 4)
        print(f"  torchvision {name:<20} {med:8.3f}")
  return out


if __name__ == "__main__":
  sys.exit(main())
