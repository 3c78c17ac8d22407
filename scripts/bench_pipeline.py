"""Throughput of the training input pipeline on the built-in shapes dataset.

Prepares ``mrcnn_shapes`` into a temporary directory (or --data_dir), builds
the training pipeline and prints images/sec pulled from it as numpy batches,
i.e. what a training loop would see from the host side::

    python scripts/bench_pipeline.py
    python scripts/bench_pipeline.py --batch_dims 1,8 --min_size 256 \
        --max_size 512 --num_batches 100

Uses TensorFlow on the CPU only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from mrcnn_jax.data import pipeline
from mrcnn_jax.data import shapes


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default: a fresh temp dir)")
  parser.add_argument("--num_train", type=int, default=shapes.DEFAULT_NUM_TRAIN)
  parser.add_argument("--batch_dims", default="1,8",
                      help="leading batch dims, comma-separated")
  parser.add_argument("--min_size", type=int, default=256)
  parser.add_argument("--max_size", type=int, default=512)
  parser.add_argument("--max_instances", type=int, default=8)
  parser.add_argument("--gt_mask_size", type=int, default=28)
  parser.add_argument("--num_batches", type=int, default=60)
  parser.add_argument("--decode", choices=("tfds", "pipeline", "both"),
                      default="both",
                      help="decode PNGs in TFDS before the shuffle, or in "
                           "the pipeline's parallel map after it")
  args = parser.parse_args(argv)

  batch_dims = tuple(int(d) for d in args.batch_dims.split(","))
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or tmp
    start = time.perf_counter()
    shapes.shapes_builder(data_dir, num_train=args.num_train,
                          num_validation=shapes.DEFAULT_NUM_VALIDATION)
    print(f"prepared mrcnn_shapes ({args.num_train} train) in "
          f"{time.perf_counter() - start:.1f} s at {data_dir}")
    modes = ("tfds", "pipeline") if args.decode == "both" else (args.decode,)
    for mode in modes:
      ds = shapes.load_shapes("train", data_dir, num_train=args.num_train,
                              decode=mode == "tfds")
      batches = pipeline.make_pipeline(
          ds, train=True, batch_dims=batch_dims,
          canvas=pipeline.canvas_for(args.max_size), min_size=args.min_size,
          max_size=args.max_size, max_instances=args.max_instances,
          gt_mask_size=args.gt_mask_size, seed=0)
      ips = pipeline.measure_throughput(
          pipeline.numpy_batches(batches), args.num_batches, warmup_batches=3)
      print(f"decode in {mode:8s}: {ips:7.1f} images/sec  (batch_dims="
            f"{batch_dims}, min/max size {args.min_size}/{args.max_size}, "
            f"{os.cpu_count()} CPU cores)")


if __name__ == "__main__":
  main()
