"""One readable trainer: state, update step, loop.

Sections follow big_vision's layout: model and state -> update step ->
logging -> loop (checkpoints: ``mrcnn_jax.checkpoints``; evaluation:
``mrcnn_jax.evaluate``). Everything is an
importable function, so a notebook can build a state, pull a batch and call
``train_step`` directly.

The update step is a pure function ``(state, batch, rng) -> (state,
metrics)`` run under ``jax.pmap`` over all local devices (axis ``batch``),
with gradients averaged by ``lax.pmean``. Batches are laid out
[devices, per-device batch, ...]. With several processes
(``mrcnn_jax.distributed``) each one runs this on its local devices, the
``pmean`` spans every device of every process, ``config.batch_size`` is the
batch over all of them, and each process reads its own shard of the input.

The model, the train step and the checkpoints do not need TensorFlow; only
the input pipeline (``mrcnn_jax.data``) does, and it is imported lazily.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import signal
import threading
import time
from typing import Any, Iterator, Mapping

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from mrcnn_jax import checkpoints, distributed, programs
from mrcnn_jax.programs import replicate  # noqa: F401  (train.replicate)
from mrcnn_jax.data.stream import StreamPosition
from mrcnn_jax.input_spec import InputSpec
from mrcnn_jax.model import init_params

log = logging.getLogger("mrcnn_jax")

# Batch fields the train step reads besides the ground truth (``gt_*``); the
# rest, e.g. counters and ids, stay on the host.
MODEL_INPUTS = ("image", "image_size")



# ============================================================================
# Model and state
# ============================================================================

@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  nonfinite_streak: jnp.ndarray  # consecutive steps skipped for a NaN/inf loss


def trainable_mask(params) -> Any:
  """True for parameters the optimiser may change.

  Frozen BatchNorm (its four tensors sit in ``params`` but are constants)
  and backbone stages frozen by ``freeze_at`` (their gradients are cut by
  ``stop_gradient``, so we also keep weight decay and momentum off them) are
  excluded.
  """
  flat = traverse_util.flatten_dict(params)
  frozen_bn_modules = {p[:-1] for p in flat if p[-1] in ("mean", "var")}
  return traverse_util.unflatten_dict(
      {p: p[:-1] not in frozen_bn_modules for p in flat})


def frozen_stage_mask(params, model) -> Any:
  """False for the backbone modules its ``freeze_at`` freezes
  (``ResNet.is_frozen``), True elsewhere."""
  flat = traverse_util.flatten_dict(params)
  is_frozen = getattr(model.backbone, "is_frozen", lambda name: False)
  return traverse_util.unflatten_dict(
      {p: not (p[0] == "backbone" and is_frozen(p[1])) for p in flat})


def weight_decay_mask(params) -> Any:
  """Weight decay on conv / dense kernels only: not on norms or biases."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({p: p[-1] == "kernel" for p in flat})


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine")


def _choice(o, field: str, choices) -> str:
  value = o.get(field, choices[0])  # configs written before the field: the first
  if value not in choices:
    raise ValueError(f"config.optimizer.{field} = {value!r}: expected one of {', '.join(choices)}")
  return value


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from ``warmup_factor * base_lr``, then either steps of
  ``decay_factor`` at ``decay_steps`` (``schedule = "multistep"``,
  Detectron2's WarmupMultiStepLR) or a half cosine from ``base_lr`` at the
  end of the warmup to 0 at ``config.total_steps`` (``"cosine"``,
  Detectron2's WarmupCosineLR)."""
  o = config.optimizer
  base = o.base_lr
  kind = _choice(o, "schedule", SCHEDULES)
  total = config.total_steps

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if o.warmup_steps > 0:
      alpha = jnp.minimum(step / o.warmup_steps, 1.0)
      warm = o.warmup_factor * (1 - alpha) + alpha
    else:  # no warmup: full rate from step 0
      warm = 1.0
    if kind == "cosine":
      # Over the whole run (Detectron2 multiplies the warmup and the cosine
      # factor the same way), clamped so steps past total_steps stay at 0.
      t = jnp.clip(step / max(total, 1), 0.0, 1.0)
      return base * warm * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    decays = sum((step >= s).astype(jnp.float32) for s in o.decay_steps)
    return base * warm * o.decay_factor ** decays
  return schedule


def make_optimizer(config: ml_collections.ConfigDict, params, model) -> optax.GradientTransformation:
  """SGD with momentum (``optimizer.name = "sgd"``) or AdamW (``"adamw"``,
  decoupled weight decay, ``betas`` and ``eps`` from the config), weight
  decay on kernels, optional clipping; frozen parameters (frozen BatchNorm,
  stages frozen by the backbone's ``freeze_at``) are left unchanged.
  ``params`` may be a template: only its structure is read."""
  o = config.optimizer
  name = _choice(o, "name", OPTIMIZERS)
  train_mask = jax.tree.map(lambda a, b: a and b, trainable_mask(params),
                            frozen_stage_mask(params, model))
  lr = learning_rate_schedule(config)
  decay_mask = weight_decay_mask(params)
  chain = []
  if o.get("grad_clip_norm"):
    chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
  if name == "adamw":
    b1, b2 = o.get("betas", (0.9, 0.999))
    chain.append(optax.adamw(lr, b1=b1, b2=b2, eps=o.get("eps", 1e-8),
                             weight_decay=o.weight_decay, mask=decay_mask))
  else:
    chain += [
        optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
        optax.sgd(lr, momentum=o.momentum),
    ]
  labels = jax.tree.map(lambda t: "train" if t else "freeze", train_mask)
  return optax.multi_transform({"train": optax.chain(*chain), "freeze": optax.set_to_zero()},
                               labels)


def _state_from_variables(variables, tx) -> TrainState:
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), nonfinite_streak=jnp.zeros((), jnp.int32))


def _initial_state(variables, tx) -> TrainState:
  """``_state_from_variables`` in one jitted call: run eagerly, the
  optimizer's zero-filled slots cost one XLA compilation per distinct
  parameter shape (about 2 s of a CPU run's start for the shapes model)."""
  return jax.jit(lambda v: _state_from_variables(v, tx))(variables)


def create_train_state(config: ml_collections.ConfigDict, rng, model, tx) -> TrainState:
  """The initial (unreplicated) state: ``model``'s initial variables, with
  ``config.init_checkpoint`` (a torchvision .pth) loaded when set."""
  variables = init_params(model, rng)
  if config.get("init_checkpoint"):
    from mrcnn_jax.weights import load_torchvision_checkpoint
    variables = load_torchvision_checkpoint(config.init_checkpoint, dict(variables),
                                            kind=config.get("init_checkpoint_kind", "backbone"),
                                            box_pool_size=model.box_head.pool_size)
    variables = jax.tree.map(jnp.asarray, variables)
  return _initial_state(variables, tx)


def train_state_template(variables, tx) -> TrainState:
  """Shapes and dtypes of the ``TrainState`` made from ``variables`` (e.g.
  ``model.variables_template``), via ``jax.eval_shape``: no compute, no
  checkpoint read. The template for restoring one."""
  return jax.eval_shape(lambda v: _state_from_variables(v, tx), variables)


# ============================================================================
# Update step
# ============================================================================

def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree_util.tree_leaves(tree)))


def weighted_total(losses: Mapping[str, jnp.ndarray], weights: Mapping[str, float]):
  """Sum of the named losses (``MaskRCNN.losses``) times their weights in
  ``config.loss_weights``; every loss needs a weight."""
  missing = sorted(set(losses) - set(weights))
  if missing:
    raise KeyError(f"config.loss_weights has no weight for {missing}; it has {sorted(weights)}")
  return sum(weights[k] * v for k, v in losses.items())


def batch_ground_truth(batch: Mapping[str, jnp.ndarray]) -> dict:
  """The ``gt_*`` fields of a batch by name (``boxes``, ``labels``, ``valid``,
  ``masks``, ...), as ``MaskRCNN.train_outputs`` takes them."""
  return {k[3:]: v for k, v in batch.items() if k.startswith("gt_")}


def train_step(state: TrainState, batch: Mapping[str, jnp.ndarray], rng, *, model,
               tx: optax.GradientTransformation, loss_weights: Mapping[str, float],
               axis_name: str | None = "batch"):
  """One SGD step on one device's shard; pure. Under pmap, gradients and
  metrics are averaged over ``axis_name``.

  A step whose loss or gradients are not finite is skipped (parameters and
  optimiser state unchanged) and counted in ``nonfinite_streak``; the loop
  stops when the streak gets too long.
  """
  b = batch["image"].shape[0]
  device = jax.lax.axis_index(axis_name) if axis_name else 0
  image_index = device * b + jnp.arange(b)
  rng = jax.random.fold_in(rng, state.step)
  has_bs = bool(jax.tree_util.tree_leaves(state.batch_stats))

  def loss_fn(params):
    variables = {"params": params}
    if has_bs:
      variables["batch_stats"] = state.batch_stats
    out = model.apply(variables, batch["image"], batch["image_size"], batch_ground_truth(batch),
                      rng, image_index, method=model.train_losses,
                      mutable=["batch_stats"] if has_bs else False)
    (losses, outputs), updates = out if has_bs else (out, {})
    total = weighted_total(losses, loss_weights)
    counts = {"num_proposals": outputs["num_proposals"].mean(),
              "num_pos_rois": outputs["roi_is_pos"].sum(axis=1).mean()}
    for key in ("num_mask_rois_left_out", "num_keypoint_rois_left_out"):
      if key in outputs:
        counts[key] = outputs[key]
    return total, (losses, updates.get("batch_stats", state.batch_stats), counts)

  (total, (losses, new_bs, counts)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  if axis_name:
    grads = jax.lax.pmean(grads, axis_name)
    total = jax.lax.pmean(total, axis_name)
    losses = jax.lax.pmean(losses, axis_name)
    new_bs = jax.lax.pmean(new_bs, axis_name)
  updates, new_opt = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(total) & jnp.isfinite(_global_norm(grads))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = TrainState(
      step=state.step + 1,
      params=keep(new_params, state.params),
      batch_stats=keep(new_bs, state.batch_stats),
      opt_state=keep(new_opt, state.opt_state),
      nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
  metrics = dict(losses, loss=total, grad_norm=_global_norm(grads),
                 skipped=(~finite).astype(jnp.float32), **counts)
  return new_state, metrics


def unreplicate(tree):
  """First device's copy of a replicated tree, on that device. It reads each
  array's first shard (no computation; flax's ``unreplicate`` would keep a
  leading axis of 1 for arrays that pmap returns with a named sharding) and
  drops the leading axis in one jitted call: indexing each of the state's
  hundreds of arrays eagerly cost half a second per checkpoint."""
  def first_shard(x):
    data = x.addressable_shards[0].data if isinstance(x, jax.Array) else np.asarray(x)[:1]
    return data if data.ndim == np.ndim(x) else data[None]
  return _drop_leading_axis(jax.tree.map(first_shard, tree))


@jax.jit
def _drop_leading_axis(tree):
  return jax.tree.map(lambda x: x[0], tree)


def make_p_train_step(model, tx, loss_weights):
  return jax.pmap(functools.partial(train_step, model=model, tx=tx,
                                    loss_weights=dict(loss_weights), axis_name="batch"),
                  axis_name="batch", donate_argnums=(0,))


def batch_spec(config, batch_dims, canvas) -> dict[str, jax.ShapeDtypeStruct]:
  """The train step's inputs on one canvas (H, W), as the input pipeline
  gives them (``mrcnn_jax/data/pipeline.py``): ``[*batch_dims, ...]``."""
  n, s = config.data.max_instances, config.data.gt_mask_size
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(tuple(batch_dims) + tuple(shape), dtype)
  out = {"image": spec((*canvas, 3), jnp.float32), "image_size": spec((2,), jnp.int32),
         "gt_boxes": spec((n, 4), jnp.float32), "gt_labels": spec((n,), jnp.int32),
         "gt_valid": spec((n,), jnp.bool_), "gt_masks": spec((n, s, s), jnp.float32)}
  if config.model.get("keypoint_on", False):  # (x, y, visibility) per keypoint
    k = int(config.model.roi_heads.keypoint.num_keypoints)
    out["gt_keypoints"] = spec((n, k, 3), jnp.float32)
  return out


def p_train_step(config, model, tx, check=None) -> programs.Program:
  """The pmapped :func:`train_step` compiled ahead of time once per batch
  signature (one program per canvas) and run as compiled; programs are
  shared in the process by runs of the same model, optimizer config, loss
  weights and devices. ``check``: ``programs.memory_check``."""
  key = ("train_step", model, config.optimizer.to_json(),
         tuple(sorted(dict(config.loss_weights).items())), tuple(jax.local_devices()))
  return programs.Program(make_p_train_step(model, tx, config.loss_weights), key, check)


# ============================================================================
# Logging
# ============================================================================

class SummaryWriter:
  """TensorBoard scalars without TensorFlow (tensorboard's own event writer);
  a no-op where tensorboard is not installed."""

  def __init__(self, logdir: str | None):
    """``logdir`` None: a writer that writes nothing (processes other than
    the first)."""
    self._writer = None
    if logdir is None:
      return
    try:
      from tensorboard.compat.proto import event_pb2, summary_pb2
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:  # e.g. an accelerator machine without tensorboard
      log.warning("tensorboard not installed: no event files will be written")
      self._writer = None
      return
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self._writer = EventFileWriter(logdir)

  def scalars(self, step: int, values: Mapping[str, float]):
    if self._writer is None:
      return
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
    self._writer.add_event(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                                 summary=summary))

  def flush(self):
    if self._writer is not None:
      self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


# ============================================================================
# Loop
# ============================================================================

class _Preemption:
  """Turns SIGTERM into a flag the loop checks, so it can checkpoint first."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some notebook kernels)
      self._old = None
    return self

  def _handle(self, signum, frame):
    log.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def device_batch_dims(config) -> tuple[int, int]:
  return programs.split_over_devices(config.batch_size, "config.batch_size")


def train_batches(config, start: StreamPosition | None = None) -> Iterator[dict]:
  """This process's training input from ``start`` (tf.data; imported here so
  the rest needs no TF): its shard of the split, batches of its local
  devices."""
  from mrcnn_jax.data import datasets
  return datasets.train_iterator(config, device_batch_dims(config), start,
                                 shard=distributed.process_shard())


def close_in_background(batches) -> threading.Thread | None:
  """Closes the training input (a generator over a tf.data iterator) in a
  thread and returns it. In three of nine 500- and 600-step shapes runs
  about 55 s passed between the last step and the evaluation's first batch,
  the main thread inside ``pipeline.numpy_batches`` while the generator
  closed (py-spy); in the others a second or two. Native stacks later put
  the wait in the tf.data iterator's destructor, joining its autotuning
  thread, which ``pipeline.make_pipeline`` no longer starts; the evaluation
  after training need not wait for whatever else a teardown takes. The
  thread is not a daemon: Python joins it before the process exits."""
  close = getattr(batches, "close", None)
  if close is None:
    return None
  thread = threading.Thread(target=close, name="close-training-input")
  thread.start()
  return thread


def input_position(meta: Mapping | None, step: int, config) -> StreamPosition:
  """Where this process's input resumes: the position saved with the
  checkpoint (``mrcnn_jax/data/stream.py``; with several processes, one per
  process in ``input_per_process``); for a checkpoint that saved none (an
  older mrcnn_jax, or another number of processes), the example after the
  ``step * batch_size / processes`` this process has seen."""
  if step == 0 or meta is None:
    return StreamPosition()
  index, count = distributed.process_shard()
  per_process = meta.get("input_per_process")
  if count == 1 and meta.get("input") is not None:
    return StreamPosition.from_json(meta["input"])
  if count > 1 and per_process and len(per_process) == count and per_process[index]:
    return StreamPosition.from_json(per_process[index])
  seen = step * config.batch_size // count
  saved = len(per_process) if per_process else (1 if meta.get("input") is not None else 0)
  log.warning("the checkpoint of step %d saved no input position for %d process(es) (%s): "
              "the input resumes at example %d of this process's stream, not exactly where "
              "it stopped", step, count,
              f"it saved {saved}" if saved else "an older mrcnn_jax, or batches given to "
              "train()", seen)
  return StreamPosition(seen)


def input_meta(position: StreamPosition | None) -> dict:
  """The input positions of every process for a checkpoint's meta: ``input``
  with one process (as before), ``input_per_process`` with several
  (gathered; every process calls this at the same step)."""
  text = json.dumps(position.to_json() if position is not None else None)
  if jax.process_count() == 1:
    return {"input": json.loads(text)}
  positions = [json.loads(b.decode()) for b in distributed.allgather_bytes(text.encode())]
  return {"input": None,
          "input_per_process": positions if all(p is not None for p in positions) else None}


def input_fingerprint(config) -> str:
  """A digest of what the input stream depends on (data config, seed,
  global batch): a run resumed with another one still trains, but not on
  the input the uninterrupted run would have read."""
  text = json.dumps({"data": json.loads(config.data.to_json_best_effort()),
                     "seed": config.seed, "batch_size": config.batch_size}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def train(config: ml_collections.ConfigDict, workdir: str,
          batches: Iterator[dict] | None = None, info=None, check_eval: bool = False
          ) -> TrainState:
  """Trains until ``config.total_steps``, resuming exactly from ``workdir``'s
  newest intact checkpoint. ``info``: the dataset's facts
  (``experiment.dataset_info``), read here when not given.

  Before the first step the train step is compiled for every canvas of the
  config (and, with ``check_eval``, the evaluation step for the evaluation
  that follows) and its memory is checked against the devices' (see
  ``mrcnn_jax/programs.py``; ``config.check_memory``). ``batches``: batches to
  train on instead of the config's input (then the input position is not
  saved). Returns the final (unreplicated) state.
  """
  from tqdm.auto import tqdm

  from mrcnn_jax import experiment
  from mrcnn_jax.model import variables_template
  primary = distributed.is_primary()
  distributed.agree(config.to_json_best_effort(sort_keys=True), "the config")
  checkpoints.check_writable(workdir)  # at once, not at the first checkpoint
  info = info if info is not None else experiment.dataset_info(config)
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, "dataset.json"), "w") as f:  # facts the model was sized by
      json.dump({"num_classes": experiment.num_classes(config, info),
                 "class_names": list(info.class_names),
                 "label_to_category_id": info.label_to_category_id}, f, indent=1)
  devices = jax.local_devices()
  ndev, per_dev = device_batch_dims(config)
  log.info("training on %d %s device(s)%s, %d images per device", jax.device_count(),
           devices[0].platform, f" in {jax.process_count()} processes"
           if jax.process_count() > 1 else "", per_dev)

  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  model = experiment.build_model(config, info)
  template = variables_template(model)
  tx = make_optimizer(config, template["params"], model)
  state_template = train_state_template(template, tx)
  checkpoints.check_writable(workdir, need_bytes=programs.tree_bytes(state_template))
  mngr, state, meta = checkpoints.restore_latest_intact(workdir, state_template,
                                                        config.keep_checkpoints)
  if state is not None:
    log.info("resumed from %s at step %d", mngr.directory, int(state.step))
  else:
    state = create_train_state(config, init_rng, model, tx)
  start = int(state.step)
  if start >= config.total_steps:
    log.info("already at step %d >= total_steps %d", start, config.total_steps)
    mngr.close()
    return state
  position = input_position(meta, start, config)
  fingerprint = input_fingerprint(config)
  if meta and meta.get("input_fingerprint") not in (None, fingerprint):
    log.warning("config.data, config.seed or config.batch_size changed since step %d was "
                "saved: training continues, but not on the input an uninterrupted run "
                "would have read", start)

  pstate = replicate(state, devices)
  prng = replicate(step_rng, devices)
  specs = [batch_spec(config, (ndev, per_dev), canvas)
           for canvas in InputSpec.from_config(config.data).canvases]
  check = programs.memory_check(
      config, devices, what="the train step", per_device_batch=per_dev,
      resident=programs.tree_bytes(state),
      # the batches prefetched, the one in use and one being assembled
      host_extra=4 * programs.tree_bytes(specs[0]),
      rebatch=lambda args, b: (args[0], programs.with_batch(args[1], b), args[2]),
      canvas=lambda args: args[1]["image"].shape[-3:-1], batch_flag="--config.batch_size",
      advice=lambda b: (f" and --config.optimizer.base_lr="
                        f"{config.optimizer.base_lr * b / config.batch_size:g} (the learning "
                        "rate scaled with the batch, Detectron2's linear scaling rule)"))
  p_step = p_train_step(config, model, tx, check)
  t0 = time.time()
  for s in specs:  # ahead of time: every canvas's program, checked before any step
    p_step.compiled(pstate, s, prng)
  eval_every = int(config.get("eval_every", 0) or 0)
  if check_eval or eval_every:
    from mrcnn_jax import evaluate
    evaluate.prepare_predict(config, model, evaluate.state_variables(state))
  log.info("train step%s compiled and checked in %.1f s",
           " and evaluation" if check_eval else "", time.time() - t0)

  if batches is None:
    batches = train_batches(config, position)
  writer = SummaryWriter(workdir if primary else None)
  schedule = learning_rate_schedule(config)

  def meta_for(step):
    return {"step": step, "examples_seen": step * config.batch_size, "seed": config.seed,
            **input_meta(position if track_input else None),
            "input_fingerprint": fingerprint}

  track_input = True
  t_last, step_last = time.time(), start
  metrics_acc = []
  # Ground truth the pipeline had to leave out, reported rather than dropped
  # silently: objects beyond max_instances (the smallest go), zero-area
  # boxes, crowd regions (never positives).
  data_counts = {k: 0 for k in ("num_dropped", "num_invalid", "num_crowd")}
  bar = tqdm(total=config.total_steps, initial=start, desc="train", unit="step",
             dynamic_ncols=True, mininterval=2.0, disable=not primary)
  stop = False
  # The processes start their collectives together (some compile or read
  # longer than others; gloo waits only tens of seconds for a peer).
  distributed.barrier("train loop")
  with _Preemption() as preempt:
    for step in range(start + 1, config.total_steps + 1):
      batch = next(batches)
      if track_input and "stream_index" in batch:
        try:
          position = position.after(batch["stream_index"])
        except ValueError as e:  # a bug: say so, keep training
          log.error("%s; the input position is no longer saved with checkpoints, and a "
                    "resumed run will not be exact", e)
          track_input = False
      else:
        track_input = False
      for k in data_counts:
        if k in batch:
          data_counts[k] += int(np.sum(batch[k]))
      batch = {k: v for k, v in batch.items() if k in MODEL_INPUTS or k.startswith("gt_")}
      pstate, metrics = p_step(pstate, batch, prng)
      metrics_acc.append(metrics)
      bar.update(1)
      if step % config.log_every == 0 or step == config.total_steps:
        m = jax.device_get(metrics_acc)
        metrics_acc = []
        avg = {k: float(np.mean([x[k][0] for x in m])) for k in m[0]}
        now = time.time()
        avg["images_per_sec"] = (step - step_last) * config.batch_size / (now - t_last)
        avg["learning_rate"] = float(schedule(step - 1))
        t_last, step_last = now, step
        avg.update({f"data/{k}": v for k, v in data_counts.items()})
        writer.scalars(step, avg)
        writer.flush()
        bar.set_postfix(loss=f"{avg['loss']:.3f}", img_s=f"{avg['images_per_sec']:.1f}")
        streak = int(jax.device_get(pstate.nonfinite_streak[0]))
        if streak >= config.max_consecutive_nonfinite:
          bar.close()
          mngr.wait_until_finished()
          raise FloatingPointError(
              f"loss was NaN/inf for {streak} consecutive steps up to step {step}; "
              f"parameters were left unchanged and no NaN was checkpointed. Lower "
              f"config.optimizer.base_lr or enable config.optimizer.grad_clip_norm.")
      # Every process saves and stops at the same step: one that stopped
      # alone would leave the others waiting in the next step's collective.
      stop = distributed.any_process(preempt.requested)
      if step % config.checkpoint_every == 0 or step == config.total_steps or stop:
        checkpoints.save_train_state(mngr, unreplicate(pstate), meta_for(step), force=stop)
      if stop:
        break
      if eval_every and step % eval_every == 0 and step < config.total_steps:
        # (the evaluation after the last step is the caller's: `mrcnn-jax train`)
        metrics = evaluate.evaluate_workdir(config, workdir, state=unreplicate(pstate),
                                            info=info)
        writer.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        writer.flush()
  bar.close()
  close_in_background(batches)
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  if any(data_counts.values()):
    log.warning("ground truth left out by the input pipeline during this run: %d objects "
                "beyond config.data.max_instances (smallest first), %d zero-area boxes, "
                "%d crowd regions", data_counts["num_dropped"], data_counts["num_invalid"],
                data_counts["num_crowd"])
  state = unreplicate(pstate)
  if stop:
    raise SystemExit(f"stopped by SIGTERM at step {int(state.step)} (checkpoint saved)")
  return state
