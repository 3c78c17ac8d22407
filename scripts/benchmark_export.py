"""CPU latency of each exported artifact next to ``jax.jit`` of the same
model (and torchvision), artifact sizes and export time, in one run.

Exports ``experiments/mask_rcnn_r50_fpn.py`` (with ``--weights``, a
torchvision state_dict such as ``check_export.py --write-r50-weights``
writes, converted by mrcnn_jax; else ``init_params``' random weights) with
``mrcnn_jax.export.export`` into a temporary directory (or ``--keep``), timing
each format's export, then times, on one scikit-image photograph prepared by
the shipped client (``client.prepare``) at the canvas ``--canvas`` (default
800x1344, the config's landscape canvas), batch ``--batch``:

  jax.jit      ``jax.jit(serve)``: the export's own serving function
               (normalisation, the model, category ids) in this process
  stablehlo    ``jax.export.deserialize(model.stablehlo).call``
  savedmodel   ``tf.saved_model.load(saved_model/)`` ``serving_default``
  onnx         onnxruntime ``InferenceSession`` on the CPU provider
  torchvision  ``maskrcnn_resnet50_fpn`` (same weights, same score threshold)
               on the photograph resized to the same size, in a subprocess
               of ``--torch-python`` (an interpreter with torchvision; skipped
               when none is given or it fails)

each as the median of ``--runs`` calls after one warm-up (the first call,
with its compile or graph optimisation, is reported on its own). Prints a
table and, last, one JSON line (``bench_common.print_json_line``).

  PYTHONPATH=. /work/bin/cpu --all python scripts/benchmark_export.py \\
      --weights /tmp/r50_calibrated.pth --torch-python /work/tvenv/bin/python

Caveat: CPU figures with the threads each runtime picks by itself (printed);
they say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench_common import (cpu_name, median_seconds, peak_rss_bytes, print_json_line,
                          usable_cores)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run by --torch-python: torchvision on the same resized photograph and weights.
TORCH_CODE = r"""
import json, sys, time, statistics
import numpy as np, torch, torchvision
args = json.loads(sys.argv[1])
image = np.load(args["image"])  # [h, w, 3] uint8, already resized
model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
if args["weights"]:
  model.load_state_dict(torch.load(args["weights"], map_location="cpu"))
model.roi_heads.score_thresh = args["score_threshold"]
model.eval()
x = [torch.from_numpy(image).permute(2, 0, 1).float().div(255)] * args["batch"]
with torch.inference_mode():
  t0 = time.perf_counter(); out = model(x); first = time.perf_counter() - t0
  times = []
  for _ in range(args["runs"]):
    t0 = time.perf_counter(); model(x); times.append(time.perf_counter() - t0)
print(json.dumps({"first_s": first, "median_s": statistics.median(times),
                  "detections": [len(o["boxes"]) for o in out],
                  "version": torchvision.__version__, "threads": torch.get_num_threads()}))
"""


def dir_size(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--weights", help="torchvision maskrcnn_resnet50_fpn state_dict (.pth)")
  parser.add_argument("--score-threshold", type=float, default=0.01,
                      help="detection score threshold of both models (check_export's)")
  parser.add_argument("--canvas", default="800x1344")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--image", default="astronaut", help="a scikit-image sample photo")
  parser.add_argument("--formats", default="stablehlo,savedmodel,onnx")
  parser.add_argument("--torch-python", help="python with torchvision, for its column")
  parser.add_argument("--keep", metavar="DIR", help="export here (kept) instead of a temp dir")
  parser.add_argument("--out", help="also write the JSON line here")
  args = parser.parse_args(argv)

  import jax
  from skimage import data

  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import mask_rcnn_r50_fpn as exp
  from mrcnn_jax import client, evaluate, experiment, export
  from mrcnn_jax.input_spec import InputSpec
  from mrcnn_jax.model import init_params

  config = exp.get_config()
  config.model.roi_heads.box.score_threshold = args.score_threshold
  info = experiment.dataset_info(config)
  model = experiment.build_model(config, info)
  if args.weights:
    variables, _ = evaluate.load_inference_variables(model, checkpoint=args.weights)
    weights = f"{os.path.basename(args.weights)} (torchvision state_dict, converted)"
  else:
    variables = jax.device_get(init_params(model, jax.random.PRNGKey(0)))
    weights = "init_params random (PRNGKey(0))"
  spec = InputSpec.from_config(config.data)
  canvas = export.parse_canvas(args.canvas)
  formats = export.parse_formats(args.formats)

  photo = np.asarray(getattr(data, args.image)())
  tmp = tempfile.TemporaryDirectory()
  out_dir = os.path.join(args.keep or tmp.name, "export")
  export_s, sizes_mb = {}, {}
  for fmt in formats:  # one format at a time, to time each
    t0 = time.perf_counter()
    export.export(model, variables, spec, class_names=info.class_names,
                  label_to_category_id=info.label_to_category_id,
                  output_dir=os.path.join(out_dir, fmt), formats=(fmt,), batch=args.batch,
                  canvas=canvas, overwrite=True, config_name="mask_rcnn_r50_fpn.py")
    export_s[fmt] = round(time.perf_counter() - t0, 1)
    einfo = client.load_export_info(os.path.join(out_dir, fmt))
    sizes_mb[fmt] = round(dir_size(os.path.join(out_dir, fmt, einfo["files"][fmt])) / 2**20, 1)
    print(f"exported {fmt} in {export_s[fmt]} s: {sizes_mb[fmt]} MiB", flush=True)
  images, image_sizes, _ = client.prepare([photo] * args.batch, einfo)

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from check_export import run_artifact
  table = export.label_table(len(info.class_names), info.label_to_category_id)
  serve = jax.jit(export.serving_function(model, variables, spec, table))
  runners = {"jax.jit": lambda x, s: jax.device_get(serve(x, s))}
  for fmt in formats:
    runners[fmt] = run_artifact(fmt, os.path.join(out_dir, fmt))

  rows = {}
  for name, run in runners.items():
    t0 = time.perf_counter()
    out = run(images, image_sizes)
    first = time.perf_counter() - t0
    med, _ = median_seconds(lambda: run(images, image_sizes), args.runs, warmup=0)
    rows[name] = {"first_s": round(first, 2), "s_per_img": round(med / args.batch, 3),
                  "detections": [int(v) for v in np.asarray(out["valid"]).sum(axis=1)]}
    print(f"{name}: {rows[name]}", flush=True)

  torch_info, torch_skipped = None, "no --torch-python"
  if args.torch_python:
    h, w = (int(v) for v in image_sizes[0])
    np.save(os.path.join(tmp.name, "image.npy"), images[0, :h, :w])
    spec_json = json.dumps({"image": os.path.join(tmp.name, "image.npy"), "weights": args.weights,
                            "score_threshold": args.score_threshold, "batch": args.batch,
                            "runs": args.runs})
    proc = subprocess.run([args.torch_python, "-c", TORCH_CODE, spec_json], capture_output=True,
                          text=True)
    if proc.returncode == 0:
      torch_info = json.loads(proc.stdout.strip().splitlines()[-1])
      rows["torchvision"] = {"first_s": round(torch_info["first_s"], 2),
                             "s_per_img": round(torch_info["median_s"] / args.batch, 3),
                             "detections": torch_info["detections"]}
      torch_skipped = None
    else:
      torch_skipped = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
  tmp.cleanup()

  import onnxruntime
  import tensorflow as tf
  device = f"cpu ({cpu_name()}, {usable_cores()} usable cores)"
  print(f"\n{device}; jax {jax.__version__}, tensorflow {tf.__version__}, onnxruntime "
        f"{onnxruntime.__version__}" + (f", torchvision {torch_info['version']} "
                                       f"({torch_info['threads']} threads)" if torch_info
                                       else f"; torchvision skipped ({torch_skipped})"))
  print(f"R50-FPN, canvas {canvas[0]}x{canvas[1]}, batch {args.batch}, {args.image} "
        f"resized to {image_sizes[0][0]}x{image_sizes[0][1]}; weights: {weights}; "
        f"median of {args.runs}")
  print(f"{'runtime':<12} {'s/img':>7} {'first call s':>13} {'export s':>9} {'size MiB':>9}"
        "  detections")
  for name, r in rows.items():
    print(f"{name:<12} {r['s_per_img']:>7.3f} {r['first_s']:>13.2f} "
          f"{export_s.get(name, '-'):>9} {sizes_mb.get(name, '-'):>9}  {r['detections']}")
  print_json_line({
      "device": device, "jax_version": jax.__version__, "tensorflow_version": tf.__version__,
      "onnxruntime_version": onnxruntime.__version__,
      "torchvision_version": torch_info and torch_info["version"],
      "torchvision_skipped": torch_skipped, "model": "mask_rcnn_r50_fpn", "weights": weights,
      "canvas": list(canvas), "batch": args.batch, "image": args.image, "runs": args.runs,
      "s_per_img": {k: r["s_per_img"] for k, r in rows.items()},
      "first_call_s": {k: r["first_s"] for k, r in rows.items()},
      "detections": {k: r["detections"] for k, r in rows.items()},
      "export_s": export_s, "artifact_mib": sizes_mb,
      "peak_rss_gib_process": round(peak_rss_bytes() / 2**30, 2)}, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
