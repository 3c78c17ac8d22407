"""Saving and loading plain variable trees (converted or exported weights)
with orbax, next to the config that built them."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np


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


def load_variables(directory: str, template: Any | None = None) -> Any:
  """Reads variables saved by ``save_variables``. With a ``template`` (e.g.
  from ``init_params``) shapes and dtypes are checked against it."""
  import orbax.checkpoint as ocp
  path = os.path.join(os.path.abspath(directory), "variables")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no saved variables at {path}")
  ckptr = ocp.StandardCheckpointer()
  if template is None:
    return ckptr.restore(path)
  return ckptr.restore(path, jax.tree.map(np.asarray, template))
