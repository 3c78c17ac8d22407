"""Building a ``MaskRCNN`` from an ``ml_collections`` model config."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mrcnn_jax.model.mask_rcnn import MaskRCNN

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _freeze(v):
  """Lists (ConfigDict turns tuples into lists after overrides) -> tuples, so
  the module's attributes are hashable."""
  if isinstance(v, (list, tuple)):
    return tuple(_freeze(x) for x in v)
  return v


def build_model(model_config: Mapping[str, Any], **overrides) -> MaskRCNN:
  """``MaskRCNN`` from ``config.model``; unknown fields are an error."""
  cfg = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
  cfg.update(overrides)
  fields = {f.name for f in dataclasses.fields(MaskRCNN)} - {"parent", "name"}
  unknown = sorted(set(cfg) - fields)
  if unknown:
    raise ValueError(f"config.model has unknown fields {unknown}; MaskRCNN accepts {sorted(fields)}")
  if isinstance(cfg.get("dtype"), str):
    if cfg["dtype"] not in _DTYPES:
      raise ValueError(f"config.model.dtype must be one of {sorted(_DTYPES)}, got {cfg['dtype']!r}")
    cfg["dtype"] = _DTYPES[cfg["dtype"]]
  return MaskRCNN(**{k: _freeze(v) for k, v in cfg.items()})


def init_params(model: MaskRCNN, rng, canvas_size=(64, 64), batch_size: int = 1):
  """Initial variables of ``model`` (``{'params': ...}`` plus ``batch_stats``
  for trainable BatchNorm). Parameter shapes do not depend on the canvas, so a
  small one is used; ``jax.eval_shape`` keeps this cheap for big models."""
  images = jnp.zeros((batch_size,) + tuple(canvas_size) + (3,), jnp.float32)
  sizes = jnp.tile(jnp.asarray(canvas_size, jnp.int32)[None], (batch_size, 1))
  return jax.jit(model.init)(rng, images, sizes)
