"""Throughput of the training input pipeline, on the built-in shapes dataset
or on a generated COCO-sized COCO-format dataset.

Prepares ``mrcnn_shapes`` into a temporary directory (or --data_dir), builds
the training pipeline and prints images/sec pulled from it as numpy batches,
i.e. what a training loop would see from the host side::

    python scripts/bench_pipeline.py
    python scripts/bench_pipeline.py --batch_dims 1,8 --min_size 256 \
        --max_size 512 --num_batches 100

``--coco`` writes --num_images JPEGs of 480 x 640 (every fourth one portrait,
640 x 480) with --objects_per_image polygon annotations as a COCO-format
dataset, prepares it with ``mrcnn_coco`` and times the COCO training recipe:
orientation buckets ((800, 1344), (1344, 800)), multi-scale min_size
640..800 (step 32), max_size 1333, 28 x 28 mask targets::

    python scripts/bench_pipeline.py --coco --batch_dims 1,2 --num_batches 40

Uses TensorFlow on the CPU only; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

from mrcnn_jax.data import pipeline
from mrcnn_jax.data import shapes
from mrcnn_jax.input_spec import InputSpec, square_canvas

COCO_CANVASES = ((800, 1344), (1344, 800))
COCO_MIN_SIZES = tuple(range(640, 801, 32))
COCO_MAX_SIZE = 1333


def write_coco_like(root: str, num_images: int, objects_per_image: int,
                    seed: int = 0) -> tuple[str, str]:
  """COCO-sized JPEGs (smooth gradients, noise, filled polygons) and their
  COCO-format json under `root`; returns (json path, image folder)."""
  rng = np.random.default_rng(seed)
  images_dir = os.path.join(root, "images")
  os.makedirs(images_dir, exist_ok=True)
  images, anns = [], []
  for i in range(num_images):
    h, w = (640, 480) if i % 4 == 3 else (480, 640)
    ys = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    xs = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    c0, c1, c2 = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
    image = c0 + ys * (c1 - c0) + xs * (c2 - c0) * 0.5
    image += rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for k in range(objects_per_image):
      cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
      radius = rng.uniform(20, min(h, w) / 3)
      angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 16))))
      r = radius * rng.uniform(0.6, 1.0, len(angles))
      px = np.clip(cx + r * np.cos(angles), 0, w)
      py = np.clip(cy + r * np.sin(angles), 0, h)
      poly = np.stack([px, py], -1).reshape(-1).round(2).tolist()
      draw.polygon(list(zip(px, py)), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
      x0, y0 = float(px.min()), float(py.min())
      anns.append({"id": len(anns) + 1, "image_id": i + 1,
                   "category_id": int(rng.integers(1, 4)) * 2,
                   "bbox": [x0, y0, float(px.max()) - x0, float(py.max()) - y0],
                   "area": float(np.pi * radius ** 2 * 0.7), "iscrowd": 0,
                   "segmentation": [poly]})
    name = f"{i + 1:012d}.jpg"
    pil.save(os.path.join(images_dir, name), quality=90)
    images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
  path = os.path.join(root, "instances.json")
  with open(path, "w") as f:
    json.dump({"images": images, "annotations": anns,
               "categories": [{"id": 2 * c, "name": f"class{c}"}
                              for c in (1, 2, 3)]}, f)
  return path, images_dir


def bench_coco(args, batch_dims) -> None:
  from mrcnn_jax.data import coco  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or os.path.join(tmp, "tfds")
    start = time.perf_counter()
    json_path, images_dir = write_coco_like(
        os.path.join(tmp, "src"), args.num_images, args.objects_per_image)
    written = time.perf_counter()
    builder = coco.coco_builder(data_dir, coco.CocoSource(
        train_json=json_path, train_images=images_dir))
    print(f"wrote {args.num_images} JPEGs in {written - start:.1f} s; "
          f"prepared mrcnn_coco in {time.perf_counter() - written:.1f} s")
    ds = coco.load_coco(builder, "train", decode=False)
    spec = InputSpec(min_sizes=COCO_MIN_SIZES, max_size=COCO_MAX_SIZE,
                     canvases=COCO_CANVASES)
    batches = pipeline.make_pipeline(
        ds, spec=spec, train=True, batch_dims=batch_dims,
        max_instances=args.max_instances, gt_mask_size=args.gt_mask_size,
        seed=0, shuffle_buffer=args.num_images)
    ips = pipeline.measure_throughput(
        pipeline.numpy_batches(batches), args.num_batches, warmup_batches=3)
    print(f"coco: {ips:7.1f} images/sec  (480x640 JPEGs, "
          f"{args.objects_per_image} polygons each, batch_dims={batch_dims}, "
          f"canvases {COCO_CANVASES}, min_size {COCO_MIN_SIZES[0]}.."
          f"{COCO_MIN_SIZES[-1]}, max_size {COCO_MAX_SIZE}, max_instances "
          f"{args.max_instances}, masks {args.gt_mask_size}, "
          f"{os.cpu_count()} CPU cores)")
    if args.eval:
      # The evaluation input (single scale, no flip), read over and over; as
      # `datasets.eval_iterator` builds it (no mask targets) and with them.
      for with_masks in (True, False):
        batches = pipeline.make_pipeline(
            ds, spec=spec, train=False, batch_dims=batch_dims,
            max_instances=args.max_instances, gt_mask_size=args.gt_mask_size,
            repeat=True, gt_masks=with_masks)
        ips = pipeline.measure_throughput(
            pipeline.numpy_batches(batches), args.num_batches, warmup_batches=3)
        print(f"coco evaluation input, mask targets "
              f"{'made' if with_masks else 'left out (as evaluated)'}: "
              f"{ips:7.1f} images/sec")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default: a fresh temp dir)")
  parser.add_argument("--num_train", type=int, default=shapes.DEFAULT_NUM_TRAIN)
  parser.add_argument("--batch_dims", default="1,8",
                      help="leading batch dims, comma-separated")
  parser.add_argument("--min_size", type=int, default=256)
  parser.add_argument("--max_size", type=int, default=512)
  parser.add_argument("--max_instances", type=int, default=None,
                      help="default 8 (shapes), 100 (--coco)")
  parser.add_argument("--gt_mask_size", type=int, default=28)
  parser.add_argument("--num_batches", type=int, default=60)
  parser.add_argument("--decode", choices=("tfds", "pipeline", "both"),
                      default="both",
                      help="decode PNGs in TFDS before the shuffle, or in "
                           "the pipeline's parallel map after it")
  parser.add_argument("--coco", action="store_true",
                      help="time the COCO recipe on a generated COCO-format "
                           "dataset of 480x640 JPEGs instead of shapes")
  parser.add_argument("--num_images", type=int, default=64,
                      help="--coco: images to generate")
  parser.add_argument("--objects_per_image", type=int, default=7,
                      help="--coco: polygon annotations per image")
  parser.add_argument("--eval", action="store_true",
                      help="--coco: also time the evaluation input, with and "
                           "without mask targets")
  args = parser.parse_args(argv)

  batch_dims = tuple(int(d) for d in args.batch_dims.split(","))
  if args.max_instances is None:
    args.max_instances = 100 if args.coco else 8
  if args.coco:
    bench_coco(args, batch_dims)
    return
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or tmp
    start = time.perf_counter()
    shapes.shapes_builder(data_dir, num_train=args.num_train,
                          num_validation=shapes.DEFAULT_NUM_VALIDATION)
    print(f"prepared mrcnn_shapes ({args.num_train} train) in "
          f"{time.perf_counter() - start:.1f} s at {data_dir}")
    modes = ("tfds", "pipeline") if args.decode == "both" else (args.decode,)
    spec = InputSpec(min_sizes=args.min_size, max_size=args.max_size,
                     canvases=(square_canvas(args.max_size),))
    for mode in modes:
      ds = shapes.load_shapes("train", data_dir, num_train=args.num_train,
                              decode=mode == "tfds")
      batches = pipeline.make_pipeline(
          ds, spec=spec, train=True, batch_dims=batch_dims,
          max_instances=args.max_instances, gt_mask_size=args.gt_mask_size,
          seed=0)
      ips = pipeline.measure_throughput(
          pipeline.numpy_batches(batches), args.num_batches, warmup_batches=3)
      print(f"decode in {mode:8s}: {ips:7.1f} images/sec  (batch_dims="
            f"{batch_dims}, min/max size {args.min_size}/{args.max_size}, "
            f"{os.cpu_count()} CPU cores)")


if __name__ == "__main__":
  main()
