"""Evaluation: inference over a dataset, COCO metrics with pycocotools,
``metrics.json`` and sample overlays; loading variables for inference
(``predict.py`` runs on image files).

Inference runs under ``jax.pmap`` on [devices, per-device batch] batches;
boxes are mapped back to each original image with the exact per-axis ratio
``orig_size / image_size`` and masks are pasted there (torchvision's
``paste_masks_in_image``, on the host so images of any size cost no
recompilation).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np

from mrcnn_jax import checkpoints, distributed, programs
from mrcnn_jax.client import to_original
from mrcnn_jax.coco_eval import detections_to_coco, evaluate_coco, write_metrics_json
from mrcnn_jax.input_spec import IMAGENET_MEAN, IMAGENET_STD
from mrcnn_jax.visualize import draw_detections, save_png

log = logging.getLogger("mrcnn_jax")


def make_p_predict(model):
  """pmapped inference: (replicated variables, images [D, b, ...], sizes) ->
  detections [D, b, ...]."""
  return jax.pmap(lambda v, x, s: model.apply(v, x, s), axis_name="batch")


def p_predict_program(model, check=None) -> programs.Program:
  """:func:`make_p_predict` compiled ahead of time once per input shape and
  run as compiled (programs shared in the process by equal models on the
  same devices). ``check``: ``programs.memory_check``."""
  return programs.Program(make_p_predict(model), ("predict", model, tuple(jax.local_devices())),
                          check)


def predict_spec(batch_dims, canvas) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
  """(images, image sizes) of one evaluation batch on canvas (H, W)."""
  dims = tuple(batch_dims)
  return (jax.ShapeDtypeStruct(dims + (*canvas, 3), np.float32),
          jax.ShapeDtypeStruct(dims + (2,), np.int32))


def prepare_predict(config, model, variables) -> None:
  """Compiles the evaluation step for every canvas of the config ahead of
  time and checks its memory (``programs.memory_check``): the trainer does
  this before its first step, so an evaluation after training neither runs
  out of memory nor compiles again."""
  from mrcnn_jax.input_spec import InputSpec
  devices = jax.local_devices()
  ndev, per_dev = _eval_batch_dims(config)
  rep = jax.tree.map(lambda x: jax.ShapeDtypeStruct((ndev,) + tuple(x.shape), x.dtype),
                     dict(variables))
  specs = [predict_spec((ndev, per_dev), c)
           for c in InputSpec.from_config(config.data).canvases]
  check = programs.memory_check(
      config, devices, what="the evaluation step", per_device_batch=per_dev, resident=0,
      host_extra=4 * programs.tree_bytes(specs[0]),
      rebatch=lambda args, b: (args[0],) + tuple(programs.with_batch(args[1:], b)),
      canvas=lambda args: args[1].shape[-3:-1], batch_flag="--config.eval_batch_size")
  program = p_predict_program(model, check)
  for images, sizes in specs:
    program.compiled(rep, images, sizes)


def predict(model, variables, batches: Iterable[dict], *, max_batches: int | None = None
            ) -> Iterator[tuple[dict, dict]]:
  """Yields (example, detections in original pixels) per real image.

  ``example`` holds the image's ``image_id``, ``orig_size``, ``image_size``
  and its normalised network input ``image``.
  """
  p_predict = p_predict_program(model)
  rep = programs.replicate(variables)
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
  """A normalised network input back to uint8 RGB (``mean`` / ``std`` of the
  ``InputSpec`` that normalised it)."""
  return np.clip((image * np.asarray(std) + np.asarray(mean)) * 255.0, 0, 255).astype(np.uint8)


def evaluate(model, variables, batches: Iterable[dict], coco_gt, *, class_names: Sequence[str],
             workdir: str | None = None, step: int = 0, num_samples: int = 0,
             label_to_category_id: Mapping[int, int] | None = None, spec=None,
             skeleton: Sequence[Sequence[int]] = (),
             kpt_oks_sigmas: Sequence[float] | None = None) -> dict:
  """COCO evaluation of the model's outputs: bbox, segm with a mask head,
  keypoints with a keypoint head (``kpt_oks_sigmas``: per-keypoint OKS
  sigmas, None for COCO's 17); writes ``metrics.json`` and sample PNGs
  (keypoints joined by ``skeleton``, 1-based pairs) to ``workdir`` when
  given (``spec``, the ``InputSpec``, un-normalises them). Returns the
  metrics dict (percent).

  With several processes each one evaluates its share of the images
  (``batches``) and writes its detections to ``workdir/eval_parts/``;
  process 0 merges them and runs pycocotools once, so ``metrics.json`` is
  a single-process evaluation's; every process returns the metrics."""
  from tqdm.auto import tqdm
  from PIL import Image

  iou_types = ["bbox"] + (["segm"] if model.mask_head is not None else []) + (
      ["keypoints"] if model.keypoint_head is not None else [])
  results, n = [], 0
  sample_dir = os.path.join(workdir, "samples") if workdir and distributed.is_primary() else None
  for ex, det in tqdm(predict(model, variables, batches), desc="eval", unit="img",
                      mininterval=2.0, disable=not distributed.is_primary()):
    results += detections_to_coco(int(ex["image_id"]), det["boxes"], det["scores"],
                                  det["labels"], det.get("masks"),
                                  label_to_category_id=label_to_category_id,
                                  keypoints=det.get("keypoints"))
    if sample_dir and n < num_samples:
      h, w = (int(x) for x in ex["image_size"])
      oh, ow = (int(x) for x in ex["orig_size"])
      img = (denormalize(ex["image"][:h, :w]) if spec is None else
             denormalize(ex["image"][:h, :w], spec.mean, spec.std))
      if (h, w) != (oh, ow):
        img = np.asarray(Image.fromarray(img).resize((ow, oh), Image.BILINEAR))
      drawn = draw_detections(img, det["boxes"], det["scores"], det["labels"], det.get("masks"),
                              class_names=class_names, score_threshold=0.5,
                              keypoints=det.get("keypoints"), skeleton=skeleton)
      save_png(os.path.join(sample_dir, f"{int(ex['image_id']):06d}.png"), drawn)
    n += 1
  log.info("evaluated %d images, %d detections", n, len(results))
  if distributed.process_count() > 1:
    results, n = _merge_results(results, n, workdir, step)
    if not distributed.is_primary():  # process 0's metrics, once it has them
      distributed.barrier("evaluated")
      return json.loads(distributed.allgather_bytes(b"{}", 8192)[0])
    log.info("evaluated %d images in %d processes, %d detections", n,
             distributed.process_count(), len(results))
  metrics = evaluate_coco(coco_gt, results, iou_types=iou_types, print_fn=log.info,
                          kpt_oks_sigmas=kpt_oks_sigmas)
  if workdir:
    write_metrics_json(os.path.join(workdir, "metrics.json"), step, metrics)
  if distributed.process_count() > 1:
    distributed.barrier("evaluated")
    distributed.allgather_bytes(json.dumps(metrics).encode(), 8192)
  return metrics


def _merge_results(results: list, n: int, workdir: str | None, step: int) -> tuple[list, int]:
  """Every process's COCO results (and image count) on process 0, through
  files in ``workdir/eval_parts/`` (a directory all processes share, as
  their checkpoints do); other processes get theirs back."""
  if not workdir:
    raise ValueError("evaluation in several processes needs a workdir (shared by all of "
                     "them) to merge their detections in")
  parts = os.path.join(workdir, "eval_parts")
  os.makedirs(parts, exist_ok=True)
  path = lambda i: os.path.join(parts, f"step{step}_process{i}.json")
  with open(path(distributed.process_index()) + ".tmp", "w") as f:
    json.dump({"images": n, "results": results}, f, default=float)
  os.replace(path(distributed.process_index()) + ".tmp", path(distributed.process_index()))
  distributed.barrier(f"eval step {step} written")
  if not distributed.is_primary():
    return results, n
  merged, total = [], 0
  for i in range(distributed.process_count()):
    with open(path(i)) as f:
      part = json.load(f)
    merged += part["results"]
    total += part["images"]
    os.remove(path(i))
  return merged, total


def load_inference_variables(model, *, workdir: str | None = None,
                             checkpoint: str | None = None):
  """Variables for inference from, in order of preference: ``checkpoint`` (a
  directory written by ``mrcnn-jax convert`` / ``checkpoints.save_variables``,
  or a torchvision ``.pth`` converted on the fly), or the latest training
  checkpoint in ``workdir`` (its params and batch_stats only). Templates come
  from ``jax.eval_shape``. Returns (variables, step)."""
  from mrcnn_jax.model import variables_template
  template = variables_template(model)
  if checkpoint:
    if os.path.isfile(checkpoint):
      from mrcnn_jax.weights import load_torchvision_checkpoint
      return load_torchvision_checkpoint(checkpoint, template,
                                         box_pool_size=model.box_head.pool_size), 0
    return checkpoints.load_variables(checkpoint, template), 0
  if not workdir:
    raise ValueError("give a training workdir or a --checkpoint")
  return checkpoints.restore_inference_variables(workdir, template)


def state_variables(state) -> dict:
  """The inference variables of a ``train.TrainState``."""
  variables = {"params": state.params}
  if jax.tree_util.tree_leaves(state.batch_stats):
    variables["batch_stats"] = state.batch_stats
  return variables


def _eval_batch_dims(config) -> tuple[int, int]:
  return programs.split_over_devices(config.eval_batch_size, "config.eval_batch_size")


def evaluate_workdir(config, workdir: str, state=None, checkpoint: str | None = None,
                     info=None) -> dict:
  """Evaluates ``state``, a ``checkpoint`` (converted directory or torchvision
  .pth) or the latest checkpoint in ``workdir`` on the config's validation
  split; writes metrics.json and samples into ``workdir``. ``info``: the
  dataset's facts (``experiment.dataset_info``), read here when not given."""
  from mrcnn_jax import experiment
  from mrcnn_jax.data import datasets
  from mrcnn_jax.input_spec import InputSpec

  info = info if info is not None else experiment.dataset_info(config)
  ndev, per_dev = _eval_batch_dims(config)
  model = experiment.build_model(config, info)
  if state is not None:
    variables, step = state_variables(state), int(state.step)
  else:
    variables, step = load_inference_variables(model, workdir=workdir, checkpoint=checkpoint)
  spec = InputSpec.from_config(config.data)
  batches = datasets.eval_iterator(config, (ndev, per_dev),
                                   shard=distributed.process_shard())
  return evaluate(model, variables, batches, datasets.eval_coco_gt(config),
                  class_names=info.class_names, workdir=workdir, step=step,
                  num_samples=config.num_sample_images,
                  label_to_category_id=info.label_to_category_id, spec=spec,
                  skeleton=info.keypoint_skeleton, kpt_oks_sigmas=info.keypoint_sigmas)
