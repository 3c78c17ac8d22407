"""Building a ``MaskRCNN`` from ``config.model`` (see ``model.config``): each
section makes its part, and the parts are given to ``MaskRCNN``."""

from __future__ import annotations

import dataclasses
import functools

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from mrcnn_jax.model import config as model_config
from mrcnn_jax.model.fpn import FPN
from mrcnn_jax.model.heads import BoxPredictor
from mrcnn_jax.model.keypoint_head import KeypointHead, KeypointRoIHead
from mrcnn_jax.model.mask_rcnn import MaskRCNN
from mrcnn_jax.model.resnet import ResNet, ResNetStage
from mrcnn_jax.model.roi_heads import (MASK_LOSSES, SOFTMAX_READOUTS, BoxRoIHead, MaskRoIHead,
                                       Pooler, RoISampler)
from mrcnn_jax.model.rpn import RPN

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _freeze(v):
  """Lists (ConfigDict turns tuples into lists after overrides) -> tuples, so
  the modules' attributes are hashable."""
  if isinstance(v, (list, tuple)):
    return tuple(_freeze(x) for x in v)
  return v


def _plain(cfg) -> dict:
  return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def _check_fields(where: str, given: Mapping, allowed) -> None:
  unknown = sorted(set(given) - set(allowed))
  if unknown:
    raise ValueError(f"{where} has unknown fields {unknown}; it accepts {sorted(allowed)}")


def _check_choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"config.model.{field} must be one of {sorted(choices)}, got {value!r}")


def _fields_of(cls, kwargs: Mapping) -> dict:
  """The entries of ``kwargs`` that ``cls`` has fields for."""
  names = {f.name for f in dataclasses.fields(cls)}
  return {k: v for k, v in kwargs.items() if k in names}


def _take(section: Mapping, cls, only=None) -> dict:
  """The entries of ``section`` that are fields of ``cls``, frozen."""
  names = model_config.part_defaults(cls, only)
  return {k: _freeze(v) for k, v in section.items() if k in names}


def _merged(defaults: Mapping, given: Mapping, where: str) -> dict:
  """``given`` over ``defaults``, recursively; unknown keys are an error."""
  out = dict(defaults)
  _check_fields(where, given, defaults)
  for k, v in given.items():
    if isinstance(defaults[k], Mapping) and isinstance(v, Mapping):
      out[k] = _merged(defaults[k], v, f"{where}.{k}")
    else:
      out[k] = v
  return out


def resolve_model_config(model_cfg: Mapping[str, Any]) -> dict:
  """``config.model`` as a plain nested dict with every default filled in;
  clear errors for unknown fields and for the flat pre-part layout."""
  given = _plain(model_cfg)
  legacy = sorted(k for k in given if k in model_config.LEGACY_FIELDS)
  if legacy:
    moves = ", ".join(f"{k} -> {model_config.LEGACY_FIELDS[k]}" for k in legacy[:8])
    raise ValueError(
        f"config.model uses the flat layout of older mrcnn_jax versions (fields {legacy}); "
        f"fields now live per part: {moves}{' ...' if len(legacy) > 8 else ''} "
        "(see mrcnn_jax/model/config.py)")
  return _merged(_plain(model_config.default_model_config()), given, "config.model")


def build_model(model_cfg: Mapping[str, Any], *, axis_name: Optional[str] = None,
                **overrides) -> MaskRCNN:
  """``MaskRCNN`` from ``config.model`` (nested by part, see
  ``model.config``). ``overrides`` are dotted paths under ``config.model``
  with ``__`` for the dots, e.g. ``roi_heads__box__score_threshold=0.3``.
  ``axis_name``: the pmap axis trainable BatchNorm synchronises over."""
  cfg = resolve_model_config(model_cfg)
  for key, value in overrides.items():
    *parents, leaf = key.split("__")
    node = cfg
    for p in parents:
      node = node[p]
    _check_fields("build_model override " + key.replace("__", "."), {leaf: value}, node)
    node[leaf] = value
  if cfg["dtype"] not in _DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(_DTYPES)}, got {cfg['dtype']!r}")
  dtype = _DTYPES[cfg["dtype"]]
  num_classes = int(cfg["num_classes"])
  if num_classes < 2:
    raise ValueError(f"config.model.num_classes must be >= 2 (background + classes), got "
                     f"{num_classes}; a dataset's count comes from data.datasets.dataset_info")
  common = dict(dtype=dtype, axis_name=axis_name)

  bb = cfg["backbone"]
  _check_choice("backbone.name", bb["name"], model_config.BACKBONES)
  backbone = ResNet(**_take(bb, ResNet), **common)
  _check_choice("neck", cfg["neck"], model_config.NECKS)
  neck_cls = model_config.NECKS[cfg["neck"]]
  neck = FPN(**_take(cfg["fpn"], FPN), **common) if neck_cls is FPN else neck_cls()
  rpn = RPN(**_take(cfg["rpn"], RPN), dtype=dtype)

  rh = cfg["roi_heads"]
  pooler = Pooler(kind=rh["pooler"], **_take(rh, Pooler, model_config.POOLER_FIELDS))
  sampler = RoISampler(**_take(rh, RoISampler))
  _check_choice("roi_heads.trunk", rh["trunk"], model_config.TRUNKS)
  trunk = None
  if rh["trunk"] == "res5":
    if bb["num_stages"] != 3:
      raise ValueError("config.model.roi_heads.trunk='res5' runs the backbone's res5 on each "
                       "RoI, so the backbone must stop at C4: set config.model.backbone."
                       f"num_stages=3 (got {bb['num_stages']})")
    trunk = ResNetStage(stage=3, **_take(bb, ResNetStage), **common)
  box = rh["box"]
  _check_choice("roi_heads.box.head", box["head"], model_config.BOX_HEADS)
  box_cls = model_config.BOX_HEADS[box["head"]]
  box_head = BoxRoIHead(head=box_cls(**_take(box, box_cls), **_fields_of(box_cls, common)),
                        predictor=BoxPredictor(num_classes=num_classes, dtype=dtype),
                        pooler=pooler, trunk=trunk, **_take(box, BoxRoIHead))
  mask_head = None
  if cfg["mask_on"]:
    mask = rh["mask"]
    _check_choice("roi_heads.mask.head", mask["head"], model_config.MASK_HEADS)
    _check_choice("roi_heads.mask.loss", mask["loss"], MASK_LOSSES)
    _check_choice("roi_heads.mask.softmax_readout", mask["softmax_readout"], SOFTMAX_READOUTS)
    if mask["softmax_readout"] != "class" and mask["loss"] != "softmax":
      raise ValueError("config.model.roi_heads.mask.softmax_readout="
                       f"{mask['softmax_readout']!r} reads a softmax-trained head: it needs "
                       f"roi_heads.mask.loss='softmax' (got {mask['loss']!r})")
    if mask["loss"] == "softmax" and mask["class_agnostic"]:
      raise ValueError("config.model.roi_heads.mask.loss='softmax' needs a mask per class: "
                       "it cannot be combined with roi_heads.mask.class_agnostic=True")
    _check_chunk("mask", mask)
    mask_cls = model_config.MASK_HEADS[mask["head"]]
    mask_head = MaskRoIHead(
        head=mask_cls(num_classes=num_classes, **_take(mask, mask_cls), **common),
        pooler=pooler, trunk=trunk, **_take(mask, MaskRoIHead))
  keypoint_head = None
  if cfg["keypoint_on"]:
    kp = rh["keypoint"]
    _check_chunk("keypoint", kp)
    keypoint_head = KeypointRoIHead(head=KeypointHead(**_take(kp, KeypointHead), **common),
                                    pooler=pooler, **_take(kp, KeypointRoIHead))
  return MaskRCNN(backbone=backbone, neck=neck, rpn=rpn, roi_sampler=sampler,
                  box_head=box_head, mask_head=mask_head, keypoint_head=keypoint_head)


def _check_chunk(head: str, section) -> None:
  """``roi_heads.<head>.chunk``: an int >= 0, and not with batch statistics."""
  chunk = section["chunk"]
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
    raise ValueError(f"config.model.roi_heads.{head}.chunk must be an int >= 0 (0: the head "
                     f"runs on every slot), got {chunk!r}")
  if chunk and section.get("norm") == "bn":
    raise ValueError(f"config.model.roi_heads.{head}.chunk runs the head on a few RoIs at a "
                     "time, which would change the batch statistics of norm='bn': use "
                     "chunk=0 with it")


def init_params(model: MaskRCNN, rng, canvas_size=(64, 64), batch_size: int = 1):
  """Initial variables of ``model`` (``{'params': ...}`` plus ``batch_stats``
  for trainable BatchNorm). Parameter shapes do not depend on the canvas, so a
  small one is used."""
  images = jnp.zeros((batch_size,) + tuple(canvas_size) + (3,), jnp.float32)
  sizes = jnp.tile(jnp.asarray(canvas_size, jnp.int32)[None], (batch_size, 1))
  return _jitted_init(model)(rng, images, sizes)


@functools.lru_cache(maxsize=8)
def _jitted_init(model: MaskRCNN):
  """One jitted ``model.init`` per (hashable, equal-by-fields) model, so
  initialising an equal model again in the process compiles nothing (a new
  ``jax.jit(model.init)`` would: the bound method is a new object). Through
  ``MaskRCNN.initialize``: every part once, without the NMS and selection
  work of a forward pass (the same variables, traced in a fraction of the
  time)."""
  return jax.jit(functools.partial(model.init, method=MaskRCNN.initialize))


def variables_template(model: MaskRCNN, canvas_size=(64, 64)):
  """Shapes and dtypes of ``init_params(model, ...)`` as
  ``jax.ShapeDtypeStruct`` leaves, from ``jax.eval_shape``: nothing is
  computed, e.g. for restoring a checkpoint."""
  return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), canvas_size))
