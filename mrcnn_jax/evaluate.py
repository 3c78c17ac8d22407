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


def evaluate_workdir(config, workdir: str, state=None) -> dict:
  """Evaluates the latest checkpoint in ``workdir`` (or ``state``) on the
  config's validation split."""
  from mrcnn_jax import train as train_lib
  from mrcnn_jax.data import datasets

  ndev = jax.local_device_count()
  if config.eval_batch_size % ndev:
    raise ValueError(f"config.eval_batch_size={config.eval_batch_size} is not divisible by "
                     f"the {ndev} local devices")
  model, template = train_lib.create_train_state(config, jax.random.PRNGKey(0))
  if state is None:
    mngr = train_lib.checkpoint_manager(workdir, config)
    state, _ = train_lib.restore_checkpoint(mngr, template)
    mngr.close()
    if state is None:
      raise FileNotFoundError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')}")
  variables = {"params": state.params}
  if jax.tree_util.tree_leaves(state.batch_stats):
    variables["batch_stats"] = state.batch_stats
  batches = datasets.eval_iterator(config, (ndev, config.eval_batch_size // ndev))
  return evaluate(model, variables, batches, datasets.eval_coco_gt(config),
                  class_names=datasets.class_names(config), workdir=workdir,
                  step=int(state.step), num_samples=config.num_sample_images)
