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
"""

from __future__ import annotations

import logging
import os
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
    lines = [f"{source} does not fit the model built from the config (wrong --config, or a "
             "config changed since it was written):"]
    for name, items in (("missing", missing), ("unexpected", unexpected),
                        ("mis-shaped", shaped)):
      if items:
        lines.append(f"  {name} ({len(items)}): " + "; ".join(items[:12])
                     + (" ..." if len(items) > 12 else ""))
    raise ValueError("\n".join(lines))


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

def checkpoint_manager(workdir: str, max_to_keep: int = 3):
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=True, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options)


def save_train_state(mngr, state, meta: dict, force: bool = False) -> bool:
  """Saves an unreplicated state (with ``meta`` and the layout version),
  never one with non-finite parameters."""
  import orbax.checkpoint as ocp
  finite = all(bool(np.isfinite(np.asarray(x)).all())
               for x in jax.tree_util.tree_leaves(state.params))
  if not finite:
    log.error("not saving step %d: parameters are not finite", int(state.step))
    return False
  meta = dict(meta, layout=LAYOUT)
  return mngr.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)


def _state_tree_metadata(directory, step: int):
  """The saved state's tree of array metadata (shapes, dtypes; no arrays)."""
  import orbax.checkpoint as ocp
  from etils import epath
  md = ocp.PyTreeCheckpointHandler().metadata(epath.Path(str(directory)) / str(step) / "state")
  return getattr(md, "tree", md)


def restore_train_state(mngr, template, step: int | None = None):
  """(state, meta) of ``step`` (default: latest) into ``template`` (e.g.
  ``train.train_state_template``), or (None, None) when there is none."""
  import orbax.checkpoint as ocp
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None, None
  if is_legacy_layout(_state_tree_metadata(mngr.directory, step)):
    raise OlderLayoutError(
        f"the checkpoint at {mngr.directory}/{step} comes from an older mrcnn_jax layout "
        "(modules fpn/, rpn_head/, box_predictor/): training cannot resume from it (its "
        "optimizer state has the old structure). `mrcnn-jax evaluate` and `predict` still "
        "read it (its variables are migrated); train in a new --workdir.")
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]


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
