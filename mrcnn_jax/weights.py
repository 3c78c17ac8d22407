"""Importing torchvision checkpoints into mrcnn_jax variables.

Two kinds of state_dict are understood:

* ``maskrcnn`` (a whole detector; ``fasterrcnn``, ``keypointrcnn`` and
  ``detector`` are the same kind): torchvision's ``maskrcnn_resnet50_fpn``,
  ``fasterrcnn_resnet50_fpn``, ``maskrcnn_resnet50_fpn_v2`` (BatchNorm in
  the FPN and the heads, a 4-conv + 1-fc box head, a 2-conv RPN head) and
  ``keypointrcnn_resnet50_fpn`` -- whichever family the model's config
  builds, the converter walks its variables -- (and the same layouts with
  another ResNet depth), both the current key names
  (``backbone.fpn.inner_blocks.0.0.weight``) and the pre-0.13 ones
  (``backbone.fpn.inner_blocks.0.weight``, ``rpn.head.conv.weight``,
  ``roi_heads.mask_head.mask_fcn1.weight``) that torchvision's published
  COCO checkpoint uses;
* ``backbone``: a torchvision ImageNet ResNet/ResNeXt (``conv1.weight``,
  ``layer1.0.conv1.weight``, ..., ``fc.*``), loaded into the backbone only;
  the classifier ``fc`` is ignored.

The conversion walks the *target* variable tree, derives the torchvision key
and layout transform of every leaf, and collects every missing, unexpected
and mis-shaped tensor into one ``CheckpointMismatchError``. Files are read
with ``mrcnn_jax.torch_io.load_torch_state_dict``, a restricted unpickler
that never runs code from the file and does not need torch.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np
from flax import traverse_util

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}


class CheckpointMismatchError(ValueError):
  """A state_dict that does not fit the model; the message lists every
  missing, unexpected and mis-shaped tensor."""


def _normalise_key(key: str) -> str:
  """Pre-0.13 torchvision key names -> current ones."""
  key = re.sub(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$",
               r"backbone.fpn.\1_blocks.\2.0.\3", key)
  key = re.sub(r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1", key)
  m = re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$", key)
  if m:
    key = f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"
  return key


def _conv_kernel(w):  # torch [out, in/groups, kh, kw] -> flax [kh, kw, in/groups, out]
  return np.transpose(w, (2, 3, 1, 0))


def _dense_kernel(w):  # torch [out, in] -> flax [in, out]
  return np.transpose(w, (1, 0))


def _deconv_kernel(w):  # torch ConvTranspose2d [in, out, kh, kw] -> [kh, kw, in, out]
  return np.transpose(w, (2, 3, 0, 1))


def _fc6_kernel(pool_size: int):
  """fc6 sees torchvision's RoI features flattened as (C, h, w); ours are
  (h, w, C). Permute the input axis of the weight accordingly."""
  def fn(w):
    out, n_in = w.shape
    c = n_in // (pool_size * pool_size)
    if c * pool_size * pool_size != n_in:
      return w.T  # the shape check reports it
    return w.reshape(out, c, pool_size, pool_size).transpose(2, 3, 1, 0).reshape(n_in, out)
  return fn


def _backbone_key(parts: tuple[str, ...], prefix: str) -> str | None:
  """('layer1_0', 'downsample_bn', 'scale') -> 'layer1.0.downsample.1.weight'."""
  *mods, leaf = parts
  names = []
  for mname in mods:
    m = re.fullmatch(r"layer(\d)_(\d+)", mname)
    if m:
      names.append(f"layer{m.group(1)}.{m.group(2)}")
    elif mname == "downsample_conv":
      names.append("downsample.0")
    elif mname == "downsample_bn":
      names.append("downsample.1")
    else:
      names.append(mname)
  return prefix + ".".join(names + [_LEAF[leaf]])


DETECTOR_KINDS = ("maskrcnn", "fasterrcnn", "keypointrcnn", "detector")
KINDS = DETECTOR_KINDS + ("backbone",)


def _norm_index(name: str) -> str:
  """'conv1' -> '0' (the conv of a Conv2dNormActivation), 'conv1_norm' ->
  '1' (its norm); used for FPN, box and mask head blocks."""
  return "1" if name.endswith("_norm") else "0"


def torchvision_key(path: tuple[str, ...], kind: str = "maskrcnn",
                    box_num_conv: int = 0) -> str | None:
  """The torchvision state_dict key of an mrcnn_jax variable path (collection
  name excluded), or None when torchvision has no such tensor.
  ``box_num_conv``: convs of the box head (``FastRCNNConvFCHead`` numbers
  its fcs after them)."""
  top, *rest = path
  leaf = rest[-1]
  detector = kind in DETECTOR_KINDS
  if top == "backbone":
    return _backbone_key(tuple(rest), "backbone.body." if detector else "")
  if top == "box_head" and rest[0] == "trunk":  # the C4 models' res5: ResNet's layer4
    return _backbone_key(tuple(rest[1:]), "backbone.body." if detector else "")
  if not detector:
    return None
  mod = rest[0]
  if top == "neck":
    m = re.fullmatch(r"(inner|layer)_(\d+)(_norm)?", mod)
    return (f"backbone.fpn.{m.group(1)}_blocks.{m.group(2)}.{_norm_index(mod)}."
            f"{_LEAF[leaf]}" if m else None)
  if top == "rpn":
    m = re.fullmatch(r"conv_(\d+)", mod)
    if m:
      return f"rpn.head.conv.{m.group(1)}.0.{_LEAF[leaf]}"
    return f"rpn.head.{mod}.{_LEAF[leaf]}"
  if top == "keypoint_head" and mod == "head":
    m = re.fullmatch(r"kps_score_lowres_(kernel|bias)", rest[1])
    if m:
      return f"roi_heads.keypoint_predictor.kps_score_lowres.{_LEAF[m.group(1)]}"
    m = re.fullmatch(r"conv_fcn(\d+)", rest[1])
    return f"roi_heads.keypoint_head.{2 * (int(m.group(1)) - 1)}.{_LEAF[leaf]}" if m else None
  if len(rest) < 3:
    return None
  layer = rest[1]
  if top == "box_head" and mod == "head":
    m = re.fullmatch(r"conv(\d+)(_norm)?", layer)
    if m:  # FastRCNNConvFCHead: conv blocks, Flatten, then Linear, ReLU, ...
      return f"roi_heads.box_head.{int(m.group(1)) - 1}.{_norm_index(layer)}.{_LEAF[leaf]}"
    m = re.fullmatch(r"fc(\d+)", layer)
    if box_num_conv and m:
      return f"roi_heads.box_head.{box_num_conv + 1 + 2 * (int(m.group(1)) - 6)}.{_LEAF[leaf]}"
    return f"roi_heads.box_head.{layer}.{_LEAF[leaf]}"
  if top == "box_head" and mod == "predictor":
    return f"roi_heads.box_predictor.{layer}.{_LEAF[leaf]}"
  if top == "mask_head" and mod == "head":
    m = re.fullmatch(r"mask_fcn(\d+)(_norm)?", layer)
    if m:
      return f"roi_heads.mask_head.{int(m.group(1)) - 1}.{_norm_index(layer)}.{_LEAF[leaf]}"
    return f"roi_heads.mask_predictor.{layer}.{_LEAF[leaf]}"
  return None


def _transform(path: tuple[str, ...], target_shape,
               pool_size: int) -> Callable[[np.ndarray], np.ndarray]:
  leaf = path[-1]
  if leaf == "kps_score_lowres_kernel":
    return _deconv_kernel
  if leaf != "kernel":
    return lambda w: w
  if path[-2] == "conv5_mask":
    return _deconv_kernel
  if path[0] == "box_head" and path[-2] == "fc6":
    return _fc6_kernel(pool_size)
  if len(target_shape) == 2:
    return _dense_kernel
  return _conv_kernel


def convert_state_dict(state_dict: Mapping[str, np.ndarray], variables: Mapping[str, Any],
                       kind: str = "maskrcnn", source: str = "state_dict",
                       box_pool_size: int = 7) -> dict:
  """Fills ``variables`` (a template, e.g. from ``init_params``) from a
  torchvision ``state_dict``.

  Args:
    state_dict: torchvision key -> numpy array.
    variables: ``{'params': ..., ['batch_stats': ...]}``; leaves that the
      checkpoint does not cover are an error for ``kind='maskrcnn'``; for
      ``kind='backbone'`` only the backbone is replaced, the rest is kept.
    kind: ``'maskrcnn'`` (or its aliases ``'fasterrcnn'``,
      ``'keypointrcnn'``, ``'detector'``: a whole detector, the family
      being the one ``variables`` has) or ``'backbone'``.
    source: a name for error messages (the file path).
    box_pool_size: RoIAlign size of the box branch (fc6 layout),
      ``model.box_head.pool_size``.

  Returns:
    a new variables dict of numpy float32 arrays (same structure).
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  detector = kind in DETECTOR_KINDS
  sd = {_normalise_key(k): np.asarray(v) for k, v in state_dict.items()}
  box_num_conv = len({p[2] for p in traverse_util.flatten_dict(variables.get("params", {}))
                      if p[:2] == ("box_head", "head") and re.fullmatch(r"conv\d+", p[2])})
  used, missing, mismatched = set(), [], []
  out = {}
  for collection, tree in variables.items():
    flat = traverse_util.flatten_dict(tree)
    new_flat = {}
    for path, value in flat.items():
      key = torchvision_key(path, kind, box_num_conv)
      if key is None:
        if detector:
          missing.append(f"{'/'.join(path)} (no torchvision counterpart)")
        new_flat[path] = np.asarray(value)
        continue
      if key not in sd:
        missing.append(key)
        new_flat[path] = np.asarray(value)
        continue
      used.add(key)
      arr = _transform(path, tuple(value.shape), box_pool_size)(sd[key])
      if tuple(arr.shape) != tuple(value.shape):
        mismatched.append(f"{key}: checkpoint {tuple(sd[key].shape)} -> {tuple(arr.shape)}, "
                          f"model expects {tuple(value.shape)} at {collection}/{'/'.join(path)}")
        new_flat[path] = np.asarray(value)
        continue
      new_flat[path] = arr.astype(np.float32)
    out[collection] = traverse_util.unflatten_dict(new_flat)
  ignored = {k for k in sd if k.endswith("num_batches_tracked")}
  if kind == "backbone":
    ignored |= {k for k in sd if k.startswith("fc.")}
  unexpected = sorted(set(sd) - used - ignored)
  if missing or unexpected or mismatched:
    lines = [f"checkpoint {source} does not fit the model ({kind}):"]
    if missing:
      lines.append(f"  missing ({len(missing)}): " + ", ".join(missing[:40])
                   + (" ..." if len(missing) > 40 else ""))
    if unexpected:
      lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected[:40])
                   + (" ..." if len(unexpected) > 40 else ""))
    if mismatched:
      lines.append(f"  mis-shaped ({len(mismatched)}): " + "; ".join(mismatched[:40]))
    raise CheckpointMismatchError("\n".join(lines))
  return out


def load_torchvision_checkpoint(path: str, variables: Mapping[str, Any],
                                kind: str = "maskrcnn", box_pool_size: int = 7) -> dict:
  """Reads a torchvision ``.pth`` safely and converts it (see
  ``convert_state_dict``)."""
  from mrcnn_jax.torch_io import load_torch_state_dict
  return convert_state_dict(load_torch_state_dict(path), variables, kind=kind,
                            source=str(path), box_pool_size=box_pool_size)

