"""``mrcnn-jax predict``: a model on image files, with overlays and COCO
results written next to them."""

from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import jax

from mrcnn_jax import image_io, preprocess
from mrcnn_jax.coco_eval import detections_to_coco
from mrcnn_jax.client import to_original
from mrcnn_jax.input_spec import InputSpec
from mrcnn_jax.visualize import draw_detections, save_png

log = logging.getLogger("mrcnn_jax")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def find_images(inputs: Sequence[str]) -> list[str]:
  """Files as given, and the images inside given folders (sorted)."""
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      paths += sorted(os.path.join(item, f) for f in os.listdir(item)
                      if f.lower().endswith(IMAGE_EXTENSIONS))
    elif os.path.isfile(item):
      paths.append(item)
    else:
      raise FileNotFoundError(f"no such image file or folder: {item}")
  if not paths:
    raise FileNotFoundError(f"no images found in {list(inputs)}")
  return paths


def predict_files(config, model, variables, inputs: Sequence[str], output_dir: str, *,
                  info, score_threshold: float = 0.5) -> dict:
  """Runs the model on image files; writes ``<output_dir>/<name>.png``
  overlays (``<name>-2.png``, ... when two inputs share a name, e.g. ``a.jpg``
  and ``a.png`` or equal names in two folders) and
  ``<output_dir>/results.json`` (COCO results format) with ``images.json``
  mapping its image ids (1-based) to the files and their overlays. Unreadable images are skipped, counted
  and named. ``info``: the dataset's facts (class names, label -> category
  id map; ``experiment.dataset_info``).

  Preprocessing is numpy with the ``InputSpec`` of ``config.data``, the one
  evaluation uses (short side ``eval_min_size``, torchvision's resize
  arithmetic, the canvas of the image's orientation), so one program is
  compiled per canvas.
  """
  from tqdm.auto import tqdm

  spec = InputSpec.from_config(config.data)
  paths = find_images(inputs)
  os.makedirs(output_dir, exist_ok=True)
  names, label_map = info.class_names, info.label_to_category_id
  infer = jax.jit(model.apply)
  results, images, skipped = [], [], []
  overlays = set()
  for path in tqdm(paths, desc="predict", unit="img"):
    image_id = len(images) + 1  # ids count the images read, 1-based
    try:
      rgb = image_io.read_rgb(path)  # the COCO builder's rule (16-bit, CMYK, ...)
    except (OSError, ValueError) as e:
      log.warning("skipped: %s", e)
      skipped.append(path)
      continue
    batch, sizes = preprocess.prepare_batch([rgb], spec)
    out = jax.device_get(infer(variables, batch, sizes))
    det = to_original({k: v[0] for k, v in out.items()}, sizes[0], rgb.shape[:2])
    results += detections_to_coco(image_id, det["boxes"], det["scores"], det["labels"],
                                  det.get("masks"), label_to_category_id=label_map,
                                  keypoints=det.get("keypoints"))
    stem = os.path.splitext(os.path.basename(path))[0]
    overlay, n = f"{stem}.png", 1
    while overlay in overlays:  # never overwrite another input's overlay
      n += 1
      overlay = f"{stem}-{n}.png"
    overlays.add(overlay)
    images.append({"id": image_id, "file_name": os.path.abspath(path),
                   "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                   "overlay": overlay})
    save_png(os.path.join(output_dir, overlay),
             draw_detections(rgb, det["boxes"], det["scores"], det["labels"], det.get("masks"),
                             class_names=names, score_threshold=score_threshold,
                             keypoints=det.get("keypoints"), skeleton=info.keypoint_skeleton))
  with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump(results, f)
  with open(os.path.join(output_dir, "images.json"), "w") as f:
    json.dump(images, f, indent=1)
  if skipped:
    log.warning("skipped %d unreadable file(s): %s", len(skipped), ", ".join(skipped))
  return {"images": len(images), "detections": len(results), "skipped": skipped}
