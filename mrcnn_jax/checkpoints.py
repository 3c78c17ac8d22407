"""Checkpoints, all with orbax: training states (a ``CheckpointManager`` in
``<workdir>/checkpoints``), and plain variable trees (converted or exported
weights in ``<dir>/variables`` next to the config that built them).

Templates for restoring come from ``jax.eval_shape`` (``model.variables_template``,
``train.train_state_template``): nothing is computed, no torchvision file is
read and, for inference, no optimizer is built -- only ``params`` and
``batch_stats`` are read from a training checkpoint.

Layouts: the variable tree of ``MaskRCNN`` changed when the model became a
composition of parts (``LAYOUT`` 2: ``neck``, ``rpn``, ``box_head/{head,
predictor}``, ``mask_head/head``; layout 1 had ``fpn``, ``rpn_head``,
``box_head``, ``box_predictor``, ``mask_head``). Variables of layout 1 are
migrated on load for evaluation and prediction; resuming training from a
layout-1 checkpoint is refused with a message that says so (its optimizer
state has the old structure).

Damage: each training checkpoint carries a SHA-256 digest of its state in
its ``meta`` item. Resuming (:func:`restore_latest_intact`) tries the newest
step first; a step that lacks a file or directory, cannot be read, or whose
contents do not match the digest is reported (which step, why), moved to
``<workdir>/damaged_checkpoints/`` and the next older one is tried. Saves
that were still being written when a run stopped (orbax's temporary
directories) are never used and are removed. A checkpoint of another model
or optimizer is not damage: it stops the run with the differences named.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

log = logging.getLogger("mrcnn_jax")

LAYOUT = 2
_VARIABLE_COLLECTIONS = ("params", "batch_stats")
# Layout 1 top-level module -> its path in layout 2.
_LEGACY_MODULES = {"fpn": ("neck",), "rpn_head": ("rpn",), "box_head": ("box_head", "head"),
                   "box_predictor": ("box_head", "predictor"), "mask_head": ("mask_head", "head")}


class OlderLayoutError(ValueError):
  """A checkpoint written by an older mrcnn_jax that cannot be used here."""


class CheckpointMismatchError(ValueError):
  """A readable training checkpoint whose state has another structure than
  the one the config builds (another model or optimizer)."""


class DamagedCheckpointError(RuntimeError):
  """A training checkpoint that cannot be used as written (missing or
  unreadable files, contents that do not match their digest)."""


# ----------------------------------------------------------------------------
# Layout migration
# ----------------------------------------------------------------------------

def is_legacy_layout(tree: Mapping) -> bool:
  """True for a params / batch_stats tree (or ``{'params': ...}``) of layout 1."""
  top = set(tree.get("params", tree))
  return bool(top & {"fpn", "rpn_head", "box_predictor"})


def migrate_legacy_variables(variables: Mapping) -> dict:
  """Layout-1 ``{'params': ..., 'batch_stats': ...}`` -> layout 2 (same
  arrays, renamed paths); a layout-2 tree is returned as is."""
  if not is_legacy_layout(variables):
    return dict(variables)
  out = {}
  for collection, tree in variables.items():
    flat = traverse_util.flatten_dict(dict(tree))
    out[collection] = traverse_util.unflatten_dict(
        {_LEGACY_MODULES.get(p[0], (p[0],)) + p[1:]: v for p, v in flat.items()})
  return out


def check_against_template(variables: Mapping, template: Mapping, source: str) -> None:
  """Clear error when restored variables do not fit the model's template."""
  got = {"/".join(p): np.shape(v) for p, v in traverse_util.flatten_dict(dict(variables)).items()}
  want = {"/".join(p): tuple(v.shape)
          for p, v in traverse_util.flatten_dict(dict(template)).items()}
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  shaped = [f"{k}: checkpoint {got[k]}, model {want[k]}" for k in sorted(set(got) & set(want))
            if tuple(got[k]) != tuple(want[k])]
  if missing or unexpected or shaped:
    raise ValueError(_differences(
        f"{source} does not fit the model built from the config (wrong --config, or a "
        "config changed since it was written):", missing, unexpected, shaped))


def _differences(header: str, missing, unexpected, shaped, limit: int = 12) -> str:
  """``header`` and the missing / unexpected / mis-shaped entries, a line
  each (the first ``limit`` of each)."""
  lines = [header]
  for name, items in (("missing", missing), ("unexpected", unexpected),
                      ("mis-shaped", shaped)):
    if items:
      lines.append(f"  {name} ({len(items)}): " + "; ".join(items[:limit])
                   + (" ..." if len(items) > limit else ""))
  return "\n".join(lines)


def _template_from_metadata(tree) -> dict:
  """ShapeDtypeStructs of a checkpoint's ``params`` / ``batch_stats`` from
  its metadata (whatever their layout)."""
  def one(md):
    return jax.ShapeDtypeStruct(tuple(md.shape), md.dtype)
  return {c: jax.tree.map(one, tree[c]) for c in _VARIABLE_COLLECTIONS
          if c in tree and tree[c]}


def _restore_partial(path: str, template) -> Any:
  """Only the leaves of ``template`` from the orbax PyTree at ``path``, as
  numpy arrays."""
  import orbax.checkpoint as ocp
  args = jax.tree.map(lambda s: ocp.RestoreArgs(restore_type=np.ndarray, dtype=s.dtype),
                      template)
  return ocp.PyTreeCheckpointer().restore(
      path, args=ocp.args.PyTreeRestore(template, restore_args=args, partial_restore=True))


# ----------------------------------------------------------------------------
# Training checkpoints
# ----------------------------------------------------------------------------

def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, "checkpoints"))


def checkpoint_manager(workdir: str, max_to_keep: int = 3):
  """orbax's manager of ``<workdir>/checkpoints``: async saves, the newest
  ``max_to_keep`` kept; temporary directories of interrupted saves are
  removed when it starts."""
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=True, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def state_digest(state) -> str:
  """SHA-256 over every leaf of ``state`` (its path, dtype, shape and bytes),
  in tree order: equal digests mean bit-identical states."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def save_train_state(mngr, state, meta: dict, force: bool = False) -> bool:
  """Saves an unreplicated state (with ``meta``, the layout version and the
  state's digest), never one with non-finite parameters."""
  import orbax.checkpoint as ocp
  host = jax.device_get(state)
  finite = all(bool(np.isfinite(np.asarray(x)).all())
               for x in jax.tree_util.tree_leaves(host.params))
  if not finite:
    log.error("not saving step %d: parameters are not finite", int(host.step))
    return False
  meta = dict(meta, layout=LAYOUT, state_sha256=state_digest(host))
  # With several processes every one calls this with the same (replicated)
  # state: host arrays, which orbax writes from process 0 only (a
  # single-device array would be written by each process); the JSON meta is
  # written by process 0 too.
  saved = state if jax.process_count() == 1 else host
  return mngr.save(int(host.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(saved), meta=ocp.args.JsonSave(meta)), force=force)


def _state_tree_metadata(directory, step: int):
  """The saved state's tree of array metadata (shapes, dtypes; no arrays)."""
  import orbax.checkpoint as ocp
  from etils import epath
  md = ocp.PyTreeCheckpointHandler().metadata(epath.Path(str(directory)) / str(step) / "state")
  return getattr(md, "tree", md)


def _check_structure(tree_metadata, template, where: str) -> None:
  """CheckpointMismatchError unless the saved tree has the template's paths,
  shapes and dtypes."""
  import orbax.checkpoint as ocp
  saved = ocp.tree.to_flat_dict(tree_metadata)
  want = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(template, keep_empty_nodes=True))
  name = lambda p: "/".join(str(k) for k in p)
  missing = sorted(name(p) for p in set(want) - set(saved))
  unexpected = sorted(name(p) for p in set(saved) - set(want))
  shaped = sorted(f"{name(p)}: checkpoint {tuple(saved[p].shape)} {saved[p].dtype}, config "
                  f"{tuple(want[p].shape)} {want[p].dtype}"
                  for p in set(saved) & set(want)
                  if hasattr(saved[p], "shape") and hasattr(want[p], "shape")
                  and (tuple(saved[p].shape) != tuple(want[p].shape)
                       or np.dtype(saved[p].dtype) != np.dtype(want[p].dtype)))
  if missing or unexpected or shaped:
    raise CheckpointMismatchError(_differences(
        f"{where} holds a training state of another model or optimizer than the config "
        "builds (a changed --config, e.g. the model, grad_clip_norm or the dataset's "
        "classes); train in a new --workdir or restore the config it was written with "
        "(config.json beside it):", missing, unexpected, shaped, limit=8))


def restore_train_state(mngr, template, step: int | None = None):
  """(state, meta) of ``step`` (default: latest) into ``template`` (e.g.
  ``train.train_state_template``), or (None, None) when there is none.

  Raises OlderLayoutError / CheckpointMismatchError for a checkpoint of
  another layout, model or optimizer, and DamagedCheckpointError (saying
  why) for one that cannot be used as written."""
  import orbax.checkpoint as ocp
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None, None
  where = f"checkpoint {mngr.directory}/{step}"
  path = os.path.join(str(mngr.directory), str(step))
  for entry in ("state", "meta"):
    if not os.path.isdir(os.path.join(path, entry)):
      raise DamagedCheckpointError(f"{where}: its directory {entry}/ is missing")
  try:
    tree = _state_tree_metadata(mngr.directory, step)
  except Exception as e:  # noqa: BLE001 -- any failure to read it is damage
    raise DamagedCheckpointError(f"{where}: its state's metadata cannot be read "
                                 f"({_first_line(e)})") from e
  if is_legacy_layout(tree):
    raise OlderLayoutError(
        f"the checkpoint at {mngr.directory}/{step} comes from an older mrcnn_jax layout "
        "(modules fpn/, rpn_head/, box_predictor/): training cannot resume from it (its "
        "optimizer state has the old structure). `mrcnn-jax evaluate` and `predict` still "
        "read it (its variables are migrated); train in a new --workdir.")
  _check_structure(tree, template, where)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
  except Exception as e:  # noqa: BLE001 -- the structure matched: the files are at fault
    raise DamagedCheckpointError(f"{where} cannot be read ({_first_line(e)})") from e
  state, meta = restored["state"], restored["meta"]
  if not isinstance(meta, dict):
    raise DamagedCheckpointError(f"{where}: its meta item is not a JSON object")
  digest = meta.get("state_sha256")
  if digest is not None and state_digest(state) != digest:
    raise DamagedCheckpointError(f"{where}: its contents do not match the SHA-256 digest "
                                 "written with them")
  return state, meta


def train_steps(workdir: str) -> list[int]:
  """The finished training checkpoints' steps in ``workdir``, oldest first."""
  directory = checkpoint_dir(workdir)
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(
      directory) else []


def read_train_meta(workdir: str, step: int) -> dict:
  """The ``meta`` item of a training checkpoint (step, input position,
  ``state_sha256``, ...), without reading its state."""
  import orbax.checkpoint as ocp
  from etils import epath
  path = epath.Path(checkpoint_dir(workdir)) / str(step) / "meta"
  return ocp.JsonCheckpointHandler().restore(path, args=ocp.args.JsonRestore())


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _move_aside(workdir_checkpoints: str, step: int) -> str:
  """Moves a damaged step out of orbax's directory (so a later save of the
  same step can happen) into ``<workdir>/damaged_checkpoints/``."""
  dest_root = os.path.join(os.path.dirname(workdir_checkpoints), "damaged_checkpoints")
  os.makedirs(dest_root, exist_ok=True)
  dest = os.path.join(dest_root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  while os.path.exists(dest):
    dest += "x"
  shutil.move(os.path.join(workdir_checkpoints, str(step)), dest)
  return dest


_TMP_STEP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


def interrupted_saves(directory: str) -> list[int]:
  """Steps whose save was still being written when a run stopped (orbax's
  temporary directories; never used, removed by the manager)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(m.group(1)) for m in map(_TMP_STEP.match, os.listdir(directory)) if m)


def restore_latest_intact(workdir: str, template, max_to_keep: int = 3):
  """(manager, state, meta) for resuming in ``workdir``: the newest intact
  checkpoint's state and meta, or (manager, None, None) when there is none.

  Damaged steps are logged with the reason, moved to
  ``<workdir>/damaged_checkpoints/``, and the next older step is tried;
  another model or optimizer (CheckpointMismatchError) or an older layout
  stops here instead.
  """
  directory = checkpoint_dir(workdir)
  for step in interrupted_saves(directory):
    log.warning("checkpoint step %d was still being written when the last run stopped: "
                "ignored (its temporary directory is removed)", step)
  mngr = checkpoint_manager(workdir, max_to_keep)
  tried = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state, meta = restore_train_state(mngr, template, step)
    except DamagedCheckpointError as e:
      # Every process finds the same damage; the first moves it aside.
      if jax.process_index() == 0:
        dest = _move_aside(directory, step)
        log.error("%s; moved to %s, trying the next older checkpoint", e, dest)
      from mrcnn_jax import distributed
      distributed.barrier(f"damaged checkpoint {step}")
      tried.append(step)
      mngr.reload()
      continue
    if tried:
      log.warning("resuming from step %d: the newer step(s) %s were damaged", step, tried)
    return mngr, state, meta
  if tried:
    log.error("every checkpoint in %s was damaged (steps %s, moved to damaged_checkpoints/): "
              "training starts from the beginning", directory, tried)
  return mngr, None, None


def check_writable(workdir: str, need_bytes: int = 0) -> None:
  """Fails at once, with the reason, when ``workdir`` or its checkpoint
  directory cannot be created or written, or its disk has less free space
  than ``need_bytes`` (one checkpoint)."""
  for directory in (workdir, checkpoint_dir(workdir)):
    probe = os.path.join(directory, f".write_test_{os.getpid()}")
    try:
      os.makedirs(directory, exist_ok=True)
      with open(probe, "wb") as f:
        f.write(b"x")
        f.flush()
        os.fsync(f.fileno())
      os.remove(probe)
    except OSError as e:
      raise PermissionError(
          f"workdir {os.path.abspath(workdir)!r} cannot be written ({directory}: "
          f"{e.strerror or e}); give a --workdir that this user can write") from e
  free = shutil.disk_usage(checkpoint_dir(workdir)).free
  if need_bytes and free < need_bytes:
    raise OSError(f"workdir {os.path.abspath(workdir)!r}: {free / 2**20:.0f} MiB free on its "
                  f"disk, less than one checkpoint ({need_bytes / 2**20:.0f} MiB)")


def restore_inference_variables(workdir: str, template: Mapping, step: int | None = None):
  """(variables, step) of a training run's checkpoint (default: latest):
  only ``params`` and ``batch_stats`` are read; older layouts are migrated;
  the result is checked against ``template`` (``model.variables_template``)."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  # Finished steps are directories named by the step (orbax writes into a
  # temporary name and renames when done).
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(
      directory) else []
  step = (steps[-1] if steps else None) if step is None else step
  if step is None or step not in steps:
    raise FileNotFoundError(f"no checkpoint{'' if step is None else f' of step {step}'} "
                            f"under {directory}")
  tree = _state_tree_metadata(directory, step)
  variables = _restore_partial(os.path.join(directory, str(step), "state"),
                               _template_from_metadata(tree))
  if is_legacy_layout(variables):
    log.info("migrating checkpoint %s/%d from the older variable layout", directory, step)
    variables = migrate_legacy_variables(variables)
  check_against_template(variables, template, f"checkpoint {directory}/{step}")
  return variables, int(step)


# ----------------------------------------------------------------------------
# Plain variable trees
# ----------------------------------------------------------------------------

def save_variables(directory: str, variables: Any, config=None) -> str:
  """Writes ``variables`` to ``directory/variables`` (orbax) and the config
  to ``directory/config.json``."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "variables")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, jax.tree.map(np.asarray, variables), force=True)
  ckptr.wait_until_finished()
  if config is not None:
    with open(os.path.join(directory, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  return path


def load_variables(directory: str, template: Mapping | None = None) -> Any:
  """Reads variables saved by ``save_variables`` (an older layout is
  migrated). With a ``template`` (``model.variables_template``) the tree is
  checked against it and cast to its dtypes."""
  import orbax.checkpoint as ocp
  path = os.path.join(os.path.abspath(directory), "variables")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no saved variables at {path}")
  variables = migrate_legacy_variables(ocp.StandardCheckpointer().restore(path))
  if template is not None:
    check_against_template(variables, template, f"variables at {path}")
    variables = jax.tree.map(lambda v, t: np.asarray(v, t.dtype), variables, dict(template))
  return variables
