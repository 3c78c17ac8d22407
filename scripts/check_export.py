"""Exported artifacts against the JAX model, over real photographs.

For each model given -- (a) a trained shapes checkpoint (``--workdir``,
``experiments/shapes.py``) and (b) torchvision's R50-FPN Mask R-CNN with
random weights made informative exactly as ``check_torchvision_parity.py``
makes them (``--r50-weights``, a .pth written by ``--write-r50-weights``) --
this runs ``mrcnn-jax export`` (all formats), runs each artifact on
scikit-image photographs that the shipped numpy client prepares
(``client.prepare``), and compares its outputs with
``jax.jit(model.apply)`` on the same input (normalised and zero-padded as
the pipeline does; labels mapped to category ids as the export does):

  per image     the same number of valid detections
  detections    matched one to one (best IoU among equal labels): labels
                equal, box IoU >= 0.99, |score difference| <= 1e-4
  masks         each side's M x M masks pasted into the original photograph
                with its own boxes (``client.to_original``, threshold 0.5):
                IoU >= 0.98 for every matched pair

Prints each comparison, then ``EXPORT CHECK OK`` (exit 0) or ``EXPORT CHECK
FAILED`` (exit 1).

Environments: the check needs jax, tensorflow, onnxruntime and jax2onnx
(the project's env with the ``export`` and ``reference`` extras); making the
R50-FPN weights needs torchvision (the parity script's env, see its
docstring), so it is a separate step:

  PYTHONPATH=. /work/tvenv/bin/python scripts/check_export.py \\
      --write-r50-weights /tmp/r50_calibrated.pth
  PYTHONPATH=. python scripts/check_export.py --workdir /work/runs/shapes_main \\
      --r50-weights /tmp/r50_calibrated.pth [--formats stablehlo,savedmodel,onnx]

The R50-FPN weights score every class, so its export uses the parity
script's score threshold (0.01, ``--config.model.roi_heads.box.
score_threshold``); the shapes model keeps its config's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from check_torchvision_parity import iou_matrix  # noqa: E402  (numpy only)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
R50_SCORE_THRESHOLD = 0.01  # check_torchvision_parity.py's default


def write_r50_weights(path: str, seed: int = 0) -> None:
  """torchvision's maskrcnn_resnet50_fpn, calibrated on the parity script's
  photographs (its ``make_torch_model``), saved as a state_dict."""
  import torch
  from check_torchvision_parity import load_images, make_torch_model
  timgs = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for _, im in load_images()]
  # the parity script's defaults: --score-threshold 0.01 --cls-scale 30
  model = make_torch_model(seed, R50_SCORE_THRESHOLD, 30.0, timgs)
  torch.save(model.state_dict(), path)
  print(f"wrote {path}")


def load_photos(names):
  from skimage import data
  return [(n, np.asarray(getattr(data, n)())) for n in names]


def mask_iou(a, b):
  inter = (a & b).sum(axis=(1, 2))
  union = (a | b).sum(axis=(1, 2))
  return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def run_artifact(fmt: str, out_dir: str):
  """A callable (images, image_sizes) -> dict of numpy outputs, loaded as a
  client without mrcnn_jax would load it."""
  if fmt == "stablehlo":
    from jax import export as jax_export
    with open(os.path.join(out_dir, "model.stablehlo"), "rb") as f:
      exp = jax_export.deserialize(f.read())
    return lambda x, s: {k: np.asarray(v) for k, v in exp.call(x, s).items()}
  if fmt == "savedmodel":
    import tensorflow as tf
    fn = tf.saved_model.load(os.path.join(out_dir, "saved_model")).signatures["serving_default"]
    return lambda x, s: {k: v.numpy() for k, v in fn(images=tf.constant(x),
                                                     image_sizes=tf.constant(s)).items()}
  if fmt == "onnx":
    import onnxruntime as ort
    sess = ort.InferenceSession(os.path.join(out_dir, "model.onnx"),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda x, s: dict(zip(names, sess.run(None, {"images": x, "image_sizes": s})))
  raise ValueError(fmt)


def compare(ref: dict, got: dict, size, orig, check, tag: str):
  """One image's outputs (``[N, ...]`` each) of the artifact vs the JAX model."""
  from mrcnn_jax import client
  rv, gv = ref["valid"].astype(bool), got["valid"].astype(bool)
  n_ref, n_got = int(rv.sum()), int(gv.sum())
  if not check(n_ref == n_got, f"{tag}: valid {n_got} vs jax {n_ref}"):
    return
  if n_ref == 0:
    return
  rd = client.to_original(ref, size, orig)
  gd = client.to_original(got, size, orig)
  same = rd["labels"][:, None] == gd["labels"][None, :]
  iou = iou_matrix(rd["boxes"], gd["boxes"]) * same
  partner = iou.argmax(axis=1)
  best = iou.max(axis=1)
  one_to_one = len(set(partner.tolist())) == n_ref
  labels_equal = bool((rd["labels"] == gd["labels"][partner]).all())
  sdiff = float(np.abs(rd["scores"] - gd["scores"][partner]).max())
  miou = mask_iou(rd["masks"], gd["masks"][partner])
  check(one_to_one and labels_equal and best.min() >= 0.99 and sdiff <= 1e-4
        and miou.min() >= 0.98,
        f"{tag}: {n_ref} detections one-to-one {one_to_one}, labels equal {labels_equal}, "
        f"min box IoU {best.min():.5f}, max |score diff| {sdiff:.1e}, mask IoU min "
        f"{miou.min():.4f} (mean {miou.mean():.4f}, masks of {int(rd['masks'].sum())} px)")


def check_model(name: str, config_path: str, source: list[str], overrides: list[str],
                formats: str, photos, batch: int, work: str, check) -> None:
  import jax
  from mrcnn_jax import cli, client, evaluate, experiment, export
  from mrcnn_jax.input_spec import InputSpec

  print(f"== {name}: {config_path} {' '.join(source + overrides)}")
  out_dir = os.path.join(work, name)
  t0 = time.time()
  cli.main(["export", "--config", config_path, *source, "--output", out_dir,
            "--formats", formats, "--batch", str(batch), *overrides])
  print(f"   export took {time.time() - t0:.0f} s")

  config = cli.apply_overrides(cli.load_config(config_path), overrides)
  info = experiment.dataset_info(config)
  model = experiment.build_model(config, info)
  kind = {"--workdir": "workdir", "--checkpoint": "checkpoint"}[source[0]]
  variables, _ = evaluate.load_inference_variables(model, **{kind: source[1]})
  spec = InputSpec.from_config(config.data)
  table = export.label_table(len(info.class_names), info.label_to_category_id)
  apply = jax.jit(model.apply)
  einfo = client.load_export_info(out_dir)
  runners = {f: run_artifact(f, out_dir) for f in einfo["files"]}

  for start in range(0, len(photos), batch):
    group = photos[start:start + batch]
    images, sizes, originals = client.prepare([im for _, im in group], einfo)
    x = (images / np.float32(255.0) - np.asarray(spec.mean, np.float32)) / np.asarray(
        spec.std, np.float32)
    for i, (h, w) in enumerate(sizes):  # the pipeline's canvas is zero outside the image
      x[i, h:] = 0
      x[i, :, w:] = 0
    ref = jax.device_get(apply(variables, x.astype(np.float32), sizes))
    ref["labels"] = np.where(ref["valid"], table[ref["labels"]], 0)
    for fmt, run in runners.items():
      got = run(images, sizes)
      for i, (photo, _) in enumerate(group):
        compare({k: ref[k][i] for k in ("boxes", "scores", "labels", "valid", "masks")},
                {k: got[k][i] for k in ("boxes", "scores", "labels", "valid", "masks")},
                sizes[i], originals[i], check, f"{fmt:<10} {photo:<9}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--write-r50-weights", metavar="PTH",
                      help="write the calibrated R50-FPN state_dict (needs torchvision) and exit")
  parser.add_argument("--workdir", help="(a) a shapes training run (latest checkpoint)")
  parser.add_argument("--shapes-config", default=os.path.join(ROOT, "experiments", "shapes.py"))
  parser.add_argument("--r50-weights", metavar="PTH", help="(b) from --write-r50-weights")
  parser.add_argument("--formats", default="stablehlo,savedmodel,onnx")
  parser.add_argument("--photos", default=",".join(PHOTOS),
                      help="scikit-image sample photographs")
  parser.add_argument("--batch", type=int, default=2, help="the exports' batch size")
  parser.add_argument("--keep", metavar="DIR", help="export here (kept) instead of a temp dir")
  args = parser.parse_args(argv)
  if args.write_r50_weights:
    write_r50_weights(args.write_r50_weights)
    return 0
  if not args.workdir and not args.r50_weights:
    parser.error("give --workdir and/or --r50-weights")
  sys.path.insert(0, os.path.join(ROOT, "experiments"))

  failures = []

  def check(ok, msg):
    print(("  ok    " if ok else "  FAIL  ") + msg, flush=True)
    if not ok:
      failures.append(msg)
    return ok

  photos = load_photos([p.strip() for p in args.photos.split(",") if p.strip()])
  print("photos: " + ", ".join(f"{n} {im.shape[0]}x{im.shape[1]}" for n, im in photos))
  with tempfile.TemporaryDirectory() as tmp:
    work = args.keep or tmp
    if args.workdir:
      check_model("shapes", args.shapes_config, ["--workdir", args.workdir], [],
                  args.formats, photos, args.batch, work, check)
    if args.r50_weights:
      check_model("r50_fpn", os.path.join(ROOT, "experiments", "mask_rcnn_r50_fpn.py"),
                  ["--checkpoint", args.r50_weights],
                  [f"--config.model.roi_heads.box.score_threshold={R50_SCORE_THRESHOLD}"],
                  args.formats, photos, args.batch, work, check)
  print("EXPORT CHECK OK" if not failures else f"EXPORT CHECK FAILED ({len(failures)})")
  return 0 if not failures else 1


if __name__ == "__main__":
  sys.exit(main())
