"""Prepares COCO 2017, or any COCO-format dataset, into a TFDS data dir.

Nothing is downloaded: the images and annotation jsons must already be on
local disk. COCO 2017 is read from a manual directory laid out as::

    <manual_dir>/train2017/*.jpg                       (train2017.zip)
    <manual_dir>/val2017/*.jpg                         (val2017.zip)
    <manual_dir>/annotations/instances_train2017.json  (annotations_trainval2017.zip)
    <manual_dir>/annotations/instances_val2017.json

and a COCO-format dataset from one annotation json and one image folder per
split (``file_name`` in the json is relative to that folder; either split may
be left out)::

    python scripts/prepare_coco.py --data_dir ~/tensorflow_datasets \\
        --manual_dir /data/coco
    python scripts/prepare_coco.py --data_dir ~/tensorflow_datasets \\
        --train_json ann/train.json --train_images img/train \\
        --val_json ann/val.json --val_images img/val

Every annotation is checked and every image decoded once (see the table in
``mrcnn_jax/data/coco.py`` for what raises and what is skipped and counted);
on COCO 2017 expect tens of minutes (not yet timed on the full set; images
are processed on up to 8 threads) and ~20 GB written (the images as they are
on disk plus one PNG mask per object). The summary printed at the end lists
the counts and the config fields that train / evaluate on the dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

from mrcnn_jax.data import coco


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="\n\n".join(__doc__.split("\n\n")[1:]))
  # Each flag also takes dashes (--manual-dir).
  parser.add_argument("--data_dir", "--data-dir", default=None,
                      help="TFDS data dir (default: ~/tensorflow_datasets or "
                           "$TFDS_DATA_DIR)")
  parser.add_argument("--manual_dir", "--manual-dir", default=None,
                      help="COCO 2017 directory (layout above)")
  for split in ("train", "val"):
    parser.add_argument(f"--{split}_json", f"--{split}-json", default=None,
                        help=f"COCO-format {split} annotation json")
    parser.add_argument(f"--{split}_images", f"--{split}-images", default=None,
                        help=f"folder of the {split} images")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

  paths = {k: getattr(args, k) for k in ("train_json", "train_images",
                                         "val_json", "val_images")}
  if args.manual_dir is None and not any(paths.values()):
    parser.error("give --manual_dir (COCO 2017) or --train_json/"
                 "--train_images and/or --val_json/--val_images")
  given = ({"manual_dir": args.manual_dir} if args.manual_dir is not None
            else {k: v for k, v in paths.items() if v is not None})
  try:
    source = coco.CocoSource(**given)
  except ValueError as e:
    parser.error(str(e))
  start = time.perf_counter()
  builder = coco.coco_builder(args.data_dir, source)
  print(f"mrcnn_coco/{builder.builder_config.name} ready at "
        f"{builder.data_dir} ({time.perf_counter() - start:.0f} s)")
  names = coco.coco_class_names(builder)
  print(f"{len(names)} classes: {', '.join(names[:10])}"
        f"{', ...' if len(names) > 10 else ''}")
  for split in builder.info.splits:
    stats = coco.coco_split_stats(builder, split)
    skipped = {k: v for k, v in stats.items()
               if k.startswith("skipped_") and not k.endswith("_ids") and v}
    print(f"{split}: {stats['num_images']} images, {stats['num_objects']} "
          f"objects ({stats['num_crowd']} crowd), "
          f"{stats['num_images_without_objects']} images without objects; "
          f"skipped: {skipped or 'nothing'}")
  fields = {"name": "coco" if args.manual_dir is not None else "coco_format",
            "data_dir": args.data_dir,
            **{k: v for k, v in dataclasses.asdict(source).items() if v}}
  print("config.data fields: " + json.dumps(fields))


if __name__ == "__main__":
  main()
