"""Evaluation and prediction: inference over a dataset, COCO metrics with
pycocotools, ``metrics.json`` and sample overlays.

Inference runs under ``jax.pmap`` on [devices, per-device batch] batches;
boxes are mapped back to each original image with the exact per-axis ratio
``orig_size / image_size`` and masks are pasted there (torchvision's
``paste_masks_in_image``, on the host so images of any size cost no
recompilation).
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, Mapping, Sequence

import flax
import jax
import numpy as np

from mrcnn_jax.coco_eval import detections_to_coco, evaluate_coco, write_metrics_json
from mrcnn_jax.ops.masks import paste_masks_numpy
from mrcnn_jax.preprocess import IMAGENET_MEAN, IMAGENET_STD
from mrcnn_jax.visualize import draw_detections, save_png

log = logging.getLogger("mrcnn_jax")


def make_p_predict(model):
  """pmapped inference: (replicated variables, images [D, b, ...], sizes) ->
  detections [D, b, ...]."""
  return jax.pmap(lambda v, x, s: model.apply(v, x, s), axis_name="batch")


def to_original(det: Mapping[str, np.ndarray], image_size, orig_size,
                mask_threshold: float = 0.5) -> dict:
  """One image's valid detections in original-image pixels, with pasted
  boolean masks [N, H, W]."""
  v = np.asarray(det["valid"], bool)
  ry = orig_size[0] / image_size[0]
  rx = orig_size[1] / image_size[1]
  boxes = np.asarray(det["boxes"])[v] * np.array([rx, ry, rx, ry], np.float32)
  masks = paste_masks_numpy(np.asarray(det["masks"])[v], boxes, tuple(int(x) for x in orig_size),
                            threshold=mask_threshold)
  return {"boxes": boxes, "scores": np.asarray(det["scores"])[v],
          "labels": np.asarray(det["labels"])[v], "masks": masks}


def predict(model, variables, batches: Iterable[dict], *, max_batches: int | None = None
            ) -> Iterator[tuple[dict, dict]]:
  """Yields (example, detections in original pixels) per real image.

  ``example`` holds the image's ``image_id``, ``orig_size``, ``image_size``
  and its normalised network input ``image``.
  """
  p_predict = make_p_predict(model)
  rep = flax.jax_utils.replicate(variables)
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    out = jax.device_get(p_predict(rep, batch["image"], batch["image_size"]))
    flat = lambda x: np.reshape(x, (-1,) + np.shape(x)[2:])
    out = {k: flat(v) for k, v in out.items()}
    ex = {k: flat(batch[k]) for k in ("image_id", "orig_size", "image_size", "image")}
    for j in range(len(ex["image_id"])):
      if ex["image_id"][j] < 0:  # padding example
        continue
      det = to_original({k: v[j] for k, v in out.items()}, ex["image_size"][j],
                        ex["orig_size"][j])
      yield {k: v[j] for k, v in ex.items()}, det


def denormalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
  return np.clip((image * np.asarray(std) + np.asarray(mean)) * 255.0, 0, 255).astype(np.uint8)


def evaluate(model, variables, batches: Iterable[dict], coco_gt, *, class_names: Sequence[str],
             workdir: str | None = None, step: int = 0, num_samples: int = 0,
             label_to_category_id: Mapping[int, int] | None = None) -> dict:
  """COCO bbox + segm evaluation; writes ``metrics.json`` and sample PNGs to
  ``workdir`` when given. Returns the metrics dict (percent)."""
  from tqdm.auto import tqdm
  from PIL import Image

  results, n = [], 0
  sample_dir = os.path.join(workdir, "samples") if workdir else None
  for ex, det in tqdm(predict(model, variables, batches), desc="eval", unit="img",
                      mininterval=2.0):
    results += detections_to_coco(int(ex["image_id"]), det["boxes"], det["scores"],
                                  det["labels"], det["masks"],
                                  label_to_category_id=label_to_category_id)
    if sample_dir and n < num_samples:
      h, w = (int(x) for x in ex["image_size"])
      oh, ow = (int(x) for x in ex["orig_size"])
      img = denormalize(ex["image"][:h, :w])
      if (h, w) != (oh, ow):
        img = np.asarray(Image.fromarray(img).resize((ow, oh), Image.BILINEAR))
      drawn = draw_detections(img, det["boxes"], det["scores"], det["labels"], det["masks"],
                              class_names=class_names, score_threshold=0.5)
      save_png(os.path.join(sample_dir, f"{int(ex['image_id']):06d}.png"), drawn)
    n += 1
  log.info("evaluated %d images, %d detections", n, len(results))
  metrics = evaluate_coco(coco_gt, results, print_fn=log.info)
  if workdir:
    write_metrics_json(os.path.join(workdir, "metrics.json"), step, metrics)
  return metrics


def class_names_for(config) -> list[str]:
  """Names indexed by label: ``config.class_names`` or the dataset's."""
  if config.get("class_names"):
    return list(config.class_names)
  from mrcnn_jax.data import datasets
  return list(datasets.class_names(config))


def resolve_num_classes(config):
  """``config.model.num_classes <= 0`` means: background + the dataset's
  categories (custom COCO-format data)."""
  if config.model.num_classes <= 0:
    config.model.num_classes = len(class_names_for(config))
  return config


def label_map_for(config):
  """Contiguous label -> category id for COCO results (None: identity)."""
  if config.get("label_space", "contiguous") == "coco_ids":
    return None  # torchvision's 91-slot labels are the category ids
  from mrcnn_jax.data import datasets
  return datasets.label_to_category_id(config)


def load_inference_variables(config, model, *, workdir: str | None = None,
                             checkpoint: str | None = None):
  """Variables for inference from, in order of preference: ``checkpoint`` (a
  directory written by ``mrcnn-jax convert`` / ``checkpoints.save_variables``,
  or a torchvision ``.pth`` converted on the fly), or the latest training
  checkpoint in ``workdir``. Returns (variables, step)."""
  from mrcnn_jax import checkpoints
  from mrcnn_jax import train as train_lib
  from mrcnn_jax.model import init_params
  if checkpoint:
    template = jax.device_get(init_params(model, jax.random.PRNGKey(0)))
    if os.path.isfile(checkpoint):
      from mrcnn_jax.weights import load_torchvision_checkpoint
      variables = load_torchvision_checkpoint(checkpoint, template,
                                              box_pool_size=config.model.box_pool_size)
    else:
      variables = checkpoints.load_variables(checkpoint, template)
    return variables, 0
  if not workdir:
    raise ValueError("give a training workdir or a --checkpoint")
  _, template = train_lib.create_train_state(config, jax.random.PRNGKey(0), model=model)
  mngr = train_lib.checkpoint_manager(workdir, config)
  state, _ = train_lib.restore_checkpoint(mngr, template)
  mngr.close()
  if state is None:
    raise FileNotFoundError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')}")
  return _state_variables(state), int(state.step)


def _state_variables(state):
  variables = {"params": state.params}
  if jax.tree_util.tree_leaves(state.batch_stats):
    variables["batch_stats"] = state.batch_stats
  return variables


def evaluate_workdir(config, workdir: str, state=None, checkpoint: str | None = None) -> dict:
  """Evaluates ``state``, a ``checkpoint`` (converted directory or torchvision
  .pth) or the latest checkpoint in ``workdir`` on the config's validation
  split; writes metrics.json and samples into ``workdir``."""
  from mrcnn_jax.data import datasets
  from mrcnn_jax.model import build_model

  resolve_num_classes(config)
  ndev = jax.local_device_count()
  if config.eval_batch_size % ndev:
    raise ValueError(f"config.eval_batch_size={config.eval_batch_size} is not divisible by "
                     f"the {ndev} local devices")
  model = build_model(config.model)
  if state is not None:
    variables, step = _state_variables(state), int(state.step)
  else:
    variables, step = load_inference_variables(config, model, workdir=workdir,
                                               checkpoint=checkpoint)
  batches = datasets.eval_iterator(config, (ndev, config.eval_batch_size // ndev))
  return evaluate(model, variables, batches, datasets.eval_coco_gt(config),
                  class_names=class_names_for(config), workdir=workdir, step=step,
                  num_samples=config.num_sample_images,
                  label_to_category_id=label_map_for(config))


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


def _canvases(config) -> list[tuple[int, int]]:
  d = config.data
  if d.get("canvases"):
    return [tuple(c) for c in d.canvases]
  return [tuple(d.canvas)]


def predict_files(config, model, variables, inputs: Sequence[str], output_dir: str, *,
                  score_threshold: float = 0.5) -> dict:
  """Runs the model on image files; writes ``<output_dir>/<name>.png``
  overlays (``<name>-2.png``, ... when two inputs share a name, e.g. ``a.jpg``
  and ``a.png`` or equal names in two folders) and
  ``<output_dir>/results.json`` (COCO results format) with ``images.json``
  mapping its image ids (1-based) to the files and their overlays. Unreadable images are skipped, counted
  and named. Preprocessing is numpy; only the label -> category id map of a
  contiguous label space reads the dataset's metadata (TensorFlow).

  One program is compiled per canvas (orientation bucket) of the config.
  """
  import json
  from PIL import Image, UnidentifiedImageError
  from tqdm.auto import tqdm

  from mrcnn_jax.coco_eval import detections_to_coco
  from mrcnn_jax.preprocess import pad_to_canvas, prepare_image

  paths = find_images(inputs)
  os.makedirs(output_dir, exist_ok=True)
  names = class_names_for(config)
  label_map = label_map_for(config)
  min_size = config.data.min_size
  min_size = min_size[0] if isinstance(min_size, (tuple, list)) else min_size
  canvases = _canvases(config)
  infer = jax.jit(model.apply)
  results, images, skipped = [], [], []
  overlays = set()
  for path in tqdm(paths, desc="predict", unit="img"):
    image_id = len(images) + 1  # ids count the images read, 1-based
    try:
      with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
      log.warning("skipping %s: cannot read it as an image (%s)", path, e)
      skipped.append(path)
      continue
    x, _ = prepare_image(rgb, min_size=min_size, max_size=config.data.max_size)
    fits = [c for c in canvases if x.shape[0] <= c[0] and x.shape[1] <= c[1]]
    if not fits:
      raise ValueError(f"{path}: resized to {x.shape[:2]}, which fits no canvas {canvases}; "
                       "check config.data.max_size against config.data.canvases")
    batch, sizes = pad_to_canvas([x], canvas=min(fits, key=lambda c: c[0] * c[1]))
    out = jax.device_get(infer(variables, batch, sizes))
    det = to_original({k: v[0] for k, v in out.items()}, sizes[0], rgb.shape[:2])
    results += detections_to_coco(image_id, det["boxes"], det["scores"], det["labels"],
                                  det["masks"], label_to_category_id=label_map)
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
             draw_detections(rgb, det["boxes"], det["scores"], det["labels"], det["masks"],
                             class_names=names, score_threshold=score_threshold))
  with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump(results, f)
  with open(os.path.join(output_dir, "images.json"), "w") as f:
    json.dump(images, f, indent=1)
  if skipped:
    log.warning("skipped %d unreadable file(s): %s", len(skipped), ", ".join(skipped))
  return {"images": len(images), "detections": len(results), "skipped": skipped}
