"""Checkpoint export: self-contained artifacts that give the model's own
detections without ``mrcnn_jax``.

Every artifact has one interface (also written to ``export.json``):

  inputs   ``images`` uint8 [B, H, W, 3] RGB at the canvas size, each image
           resized by the export's rule (``export.json`` "input") and placed
           in the top-left corner; ``image_sizes`` int32 [B, 2], the (h, w)
           of each resized image inside the canvas. Normalisation (and
           zeroing the padding) happens inside the artifact.
  outputs  ``boxes`` float32 [B, N, 4] xyxy in canvas pixels; ``scores``
           float32 [B, N]; ``labels`` int32 [B, N] dataset category ids;
           ``valid`` bool [B, N]; ``masks`` float32 [B, N, M, M] mask
           probabilities in box coordinates; optionally ``masks_canvas``
           uint8 [B, N, H, W] (masks pasted into the canvas, 0/1).

Formats (``FORMATS``):

  stablehlo   ``model.stablehlo``: ``jax.export`` serialized, lowered for
              cpu and cuda; ``jax.export.deserialize(data).call(images,
              image_sizes)`` returns the output dict.
  savedmodel  ``saved_model/``: TF SavedModel (jax2tf, native
              serialization) with a ``serving_default`` signature.
  onnx        ``model.onnx``: ONNX (opset 23) for onnxruntime, converted by
              jax2onnx (the ``export`` extra) from the same program.

Next to them: ``export.json`` (the interface, the resize rule, class names
and category ids) and ``client.py`` (``mrcnn_jax/client.py``: numpy only,
resizes any image into the input and maps detections back).

The weights are constants of the exported program. Export code stays here:
the model has no export branches.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mrcnn_jax import client
from mrcnn_jax.input_spec import SIZE_DIVISIBILITY, InputSpec
from mrcnn_jax.ops.masks import paste_masks

FORMATS = ("stablehlo", "savedmodel", "onnx")
EXPORT_VERSION = 1
INPUTS = ("images", "image_sizes")


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
  names = [f.strip() for f in (text.split(",") if isinstance(text, str) else text) if f.strip()]
  unknown = sorted(set(names) - set(FORMATS))
  if unknown or not names:
    raise ValueError(f"unknown export format(s) {unknown or names}; choose from {FORMATS}")
  return tuple(dict.fromkeys(names))


def parse_canvas(text: str | Sequence[int]) -> tuple[int, int]:
  try:
    hw = tuple(int(v) for v in (text.lower().split("x") if isinstance(text, str) else text))
  except ValueError:
    hw = ()
  if len(hw) != 2 or min(hw) < 1:
    raise ValueError(f"--canvas must be HxW, e.g. 800x1344; got {text!r}")
  if hw[0] % SIZE_DIVISIBILITY or hw[1] % SIZE_DIVISIBILITY:
    raise ValueError(f"--canvas {hw[0]}x{hw[1]} is not divisible by the backbone's stride "
                     f"{SIZE_DIVISIBILITY}")
  return hw


def check_arguments(formats, canvas, output_dir: str, overwrite: bool):
  """(formats, canvas) parsed (a canvas of None stays None); an existing
  ``output_dir`` is refused unless ``overwrite``. Cheap, so callers can fail
  before loading a model."""
  formats = parse_formats(formats)
  if "onnx" in formats and importlib.util.find_spec("jax2onnx") is None:
    raise ImportError("the onnx format needs jax2onnx and onnxruntime: pip install "
                      "'mrcnn_jax[export]' (or leave it out: --formats stablehlo,savedmodel)")
  canvas = parse_canvas(canvas) if canvas is not None else None
  if os.path.exists(output_dir) and not overwrite:
    raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it")
  return formats, canvas


def label_table(num_classes: int, label_to_category_id: Mapping[int, int] | None) -> np.ndarray:
  """int32 [K]: label -> category id (identity for coco_ids label spaces;
  background stays 0)."""
  table = np.arange(num_classes, dtype=np.int32)
  for label, cat in (label_to_category_id or {}).items():
    if 0 < int(label) < num_classes:
      table[int(label)] = int(cat)
  return table


def serving_function(model, variables, spec: InputSpec, table: np.ndarray,
                     masks_canvas: bool = False):
  """(images uint8 [B, H, W, 3], image_sizes int32 [B, 2]) -> output dict,
  with the variables closed over (constants of the exported program)."""
  mean = np.asarray(spec.mean, np.float32)
  std = np.asarray(spec.std, np.float32)
  table = jnp.asarray(table)

  def serve(images, image_sizes):
    h, w = images.shape[1:3]
    x = (images.astype(jnp.float32) / 255.0 - mean) / std
    # Outside each image the pipeline's canvas is zero after normalisation.
    inside = ((jnp.arange(h)[None, :, None] < image_sizes[:, None, None, 0])
              & (jnp.arange(w)[None, None, :] < image_sizes[:, None, None, 1]))
    x = jnp.where(inside[..., None], x, 0.0)
    out = model.apply(variables, x, image_sizes)
    result = {"boxes": out["boxes"].astype(jnp.float32),
              "scores": out["scores"].astype(jnp.float32),
              "labels": jnp.where(out["valid"], table[out["labels"]], 0).astype(jnp.int32),
              "valid": out["valid"],
              "masks": out["masks"].astype(jnp.float32)}
    if masks_canvas:
      pasted = jax.vmap(lambda m, b: paste_masks(m, b, (h, w)))(out["masks"], out["boxes"])
      result["masks_canvas"] = ((pasted > 0.5) & out["valid"][..., None, None]).astype(
          jnp.uint8)
    return result

  return serve


def _spec_args(batch: int, canvas: tuple[int, int]):
  return (jax.ShapeDtypeStruct((batch,) + tuple(canvas) + (3,), jnp.uint8),
          jax.ShapeDtypeStruct((batch, 2), jnp.int32))


def export_stablehlo(serve, batch: int, canvas, path: str,
                     platforms: Sequence[str] = ("cpu", "cuda")):
  exported = jax.export.export(jax.jit(serve), platforms=tuple(platforms))(
      *_spec_args(batch, canvas))
  with open(path, "wb") as f:
    f.write(exported.serialize())
  return exported


@contextlib.contextmanager
def _stablehlo_target(version: str):
  """Serializes exported programs for a StableHLO ``version`` instead of
  JAX's default (4 weeks old). TensorFlow runs a SavedModel's program with
  its own, older StableHLO (1.13.7 in TF 2.21 next to 1.15 from JAX 0.10),
  which cannot read newer ops (``lax.top_k`` became a composite). This
  replaces a private JAX hook for the duration of one export; without it
  the SavedModel loads but fails at its first call. Yields the list of
  serializations made through it, so that a JAX that stopped calling the
  hook is an error at export time, not at the client's first call."""
  try:
    from jax._src import xla_bridge
    from jax._src.export import _export
    from jax._src.lib import _jax
    original = _export._module_to_bytecode
    serialize = _jax.mlir.serialize_portable_artifact
    with_sdy = xla_bridge.get_backend().serialize_with_sdy
  except (ImportError, AttributeError) as e:
    raise RuntimeError(
        f"the TF SavedModel is serialized for TensorFlow's StableHLO {version} through a "
        f"private JAX hook (jax._src.export._export._module_to_bytecode and "
        f"jax._src.lib._jax.mlir.serialize_portable_artifact) that JAX {jax.__version__} "
        f"does not have ({e}); mrcnn_jax.export._stablehlo_target needs updating for it. "
        "The other formats do not use it: --formats stablehlo,onnx") from e

  calls = []

  def to_bytecode(module):
    calls.append(version)
    return serialize(module, version, with_sdy)

  _export._module_to_bytecode = to_bytecode
  try:
    yield calls
  finally:
    _export._module_to_bytecode = original


def export_savedmodel(serve, batch: int, canvas, path: str,
                      platforms: Sequence[str] = ("cpu", "cuda")):
  import tensorflow as tf
  from jax.experimental import jax2tf
  from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo
  converted = jax2tf.convert(serve, with_gradient=False,
                             native_serialization_platforms=tuple(platforms))
  module = tf.Module()
  module.serve = tf.function(
      lambda images, image_sizes: converted(images, image_sizes), autograph=False,
      input_signature=[tf.TensorSpec((batch,) + tuple(canvas) + (3,), tf.uint8, name="images"),
                       tf.TensorSpec((batch, 2), tf.int32, name="image_sizes")])
  version = tf_stablehlo.get_current_version()
  with _stablehlo_target(version) as calls:
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
  if not calls:
    raise RuntimeError(
        f"JAX {jax.__version__} serialized the SavedModel's program without the hook "
        "mrcnn_jax.export._stablehlo_target replaces, so it is not readable by TensorFlow's "
        f"StableHLO {version}; the export needs updating for this JAX")


# Call-like primitives replayed inline, with the jaxpr that computes their
# value: custom derivatives (ops.conv's kernel gradient, jax.nn's
# activations) mean nothing to an inference graph, and nested jits are
# flattened so that no custom derivative hides inside one.
_INLINE = {"custom_vjp_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
           "jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr"}
# Primitives that only matter to differentiation, replayed as their input:
# stop_gradient (the RPN's proposals, frozen backbone stages) would otherwise
# reach jax2onnx 0.17's Identity plugin, which names its output like the
# placeholder it made for it; in the R50-FPN graph onnxruntime then refused
# the model ("Node input 'stop_out_0' is not a graph input, initializer, or
# output of a previous node").
_PASS_THROUGH = ("stop_gradient",)


def _eval_forward(jaxpr, consts, *args):
  """``jax.core.eval_jaxpr``, with the primitives of ``_INLINE`` replaced by
  the equations of their inner jaxpr (recursively): the forward pass as
  plain primitives and control flow."""
  env = {}

  def read(v):
    return v.val if type(v).__name__ == "Literal" else env[v]

  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in _INLINE:
      inner = eqn.params.get(_INLINE[name])
      if inner is None or not hasattr(inner, "jaxpr"):
        raise RuntimeError(f"{name} has no closed jaxpr {_INLINE[name]!r} in JAX "
                           f"{jax.__version__}; mrcnn_jax.export._INLINE needs updating")
      outs = _eval_forward(inner.jaxpr, inner.consts, *invals)
    elif name in _PASS_THROUGH:
      outs = invals
    elif name == "gather" and invals[0].dtype == jnp.bool_:
      # jax2onnx writes a gather in JAX's default "fill" mode as Gather + Where,
      # and onnxruntime has no Where kernel for bool: gather the mask as
      # uint8 (an out-of-range index fills 255 -> True, as it fills True for
      # bool) and compare back.
      params = eqn.primitive.get_bind_params(eqn.params)
      outs = [eqn.primitive.bind(invals[0].astype(jnp.uint8), *invals[1:], **params) != 0]
    else:
      outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
      outs = outs if eqn.primitive.multiple_results else [outs]
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
  return [read(v) for v in jaxpr.outvars]


def with_per_image_nms(model):
  """The same model (same variables) with one NMS loop per image in the RPN
  and the box head instead of a ``vmap``ped loop: the same detections, and
  plain dynamic reads and writes of one row that jax2onnx translates, where
  the vmapped loop's batched scatter (``FILL_OR_DROP``) has no ONNX
  lowering in jax2onnx 0.17. Only the ONNX export uses it: on a GPU a loop
  per image costs about B times the vmapped one."""
  return model.clone(rpn=model.rpn.clone(per_image_nms=True),
                     box_head=model.box_head.clone(per_image_nms=True))


def export_onnx(serve, batch: int, canvas, path: str, output_names: Sequence[str]):
  """ONNX through jax2onnx, which converts a jaxpr's primitives one by one.

  jax2onnx is given the program as a replay of its jaxpr, not the model
  itself: while tracing it swaps Flax's own layers (``nn.Conv``,
  ``nn.max_pool``, ...) for its plugins, which would convert a different
  program from the one the other formats export (and its ``max_pool``
  patch rejects positional arguments). Replayed, the graph holds exactly
  the primitives of ``jax.make_jaxpr(serve)``, custom derivatives reduced
  to their forward pass.
  """
  from jax2onnx import to_onnx  # the export extra (check_arguments says so when missing)
  names = list(output_names)

  def outputs_in_order(images, sizes):
    out = serve(images, sizes)  # once: each call traces the whole model again
    return [out[k] for k in names]

  closed = jax.make_jaxpr(outputs_in_order)(*_spec_args(batch, canvas))

  def replay(images, image_sizes):
    return tuple(_eval_forward(closed.jaxpr, closed.consts, images, image_sizes))

  with _jax2onnx_speedups(), _quiet_loggers("jax2onnx", "onnx_ir"):
    to_onnx(replay, inputs=list(_spec_args(batch, canvas)), model_name="mrcnn_jax",
            input_names=list(INPUTS), output_names=names, return_mode="file",
            output_path=path)
  # jax2onnx writes large constants to a side file (path + ".data", readable
  # by its owner only). The weights of these models are far below protobuf's
  # 2 GiB limit, so keep the artifact one self-contained file.
  import onnx
  model = onnx.load(path)  # with the side file's tensors
  onnx.save_model(model, path, save_as_external_data=False)
  if os.path.exists(path + ".data"):
    os.remove(path + ".data")


def _in_graph(value, graph) -> bool:
  """Whether an onnx_ir value is produced by a node of ``graph`` (O(1))."""
  producer = value.producer() if hasattr(value, "producer") else None
  return producer is not None and graph is not None and producer.graph is graph


def _initializer_table(ctx):
  """{name: value} of the initializers of the graph a jax2onnx context is
  building (onnx_ir keeps them in a dict), or None where it is not one."""
  table = getattr(getattr(getattr(ctx, "builder", None), "graph", None), "initializers", None)
  return table if isinstance(table, Mapping) else None


def _is_initializer(ctx, value) -> bool:
  table = _initializer_table(ctx)
  name = getattr(value, "name", None)
  return table is not None and bool(name) and name in table


def _fast_value_is_graph_connected(original):
  def connected(ctx, value):
    return (_in_graph(value, getattr(ctx.builder, "nodes", None)) or _is_initializer(ctx, value)
            or original(ctx, value))
  return connected


def _fast_materialize_constant_array(original):
  """jax2onnx's ``broadcast_in_dim`` lowering asks, for each operand, for
  its constant value: the value's own, an initializer's of the same name
  (which it finds by listing every initializer, twice), or what its
  producer computes from constants (Cast, CastLike, Reshape, Constant).
  This answers the initializer part from the graph's dict by name and
  leaves the rest to the same module's helpers."""
  import sys
  module = sys.modules[original.__module__]
  try:
    value_to_numpy = module._value_to_numpy
    node_constant_array = module._node_constant_array
    get_attr = module._iro_get_attr
  except AttributeError:  # another jax2onnx layout: keep its own function
    return original

  def materialize(ctx, value, seen=None):
    table = _initializer_table(ctx)
    if table is None:
      return original(ctx, value, seen)
    arr = value_to_numpy(value)
    if arr is not None:
      return arr
    name = getattr(value, "name", None)
    if name and name in table:
      arr = value_to_numpy(table[name])
      if arr is not None:
        return arr
    producer = getattr(value, "producer", None)
    try:
      node = producer() if callable(producer) else None
    except Exception:  # noqa: BLE001 -- as the original: no producer, no constant
      node = None
    seen = set() if seen is None else seen
    if node is None or node in seen:
      return None
    seen.add(node)
    arr = node_constant_array(ctx, node, value, seen)
    if arr is None and getattr(node, "op_type", "") == "Constant":
      attr = get_attr(node, "value")
      arr = value_to_numpy(attr) if attr is not None else None
    return arr
  return materialize


def _fast_producer_node(original):
  def producer_node(nodes, value_or_name):
    if not hasattr(value_or_name, "producer"):  # a name: the original's scan
      return original(nodes, value_or_name)
    producer = value_or_name.producer()
    if producer is None:  # a graph input or initializer: no node produces it
      return None
    if nodes and _in_graph(value_or_name, nodes[0].graph):
      return producer
    return original(nodes, value_or_name)
  return producer_node


# jax2onnx (0.17) functions that find a value's producer or an initializer
# by scanning every node or initializer of the graph, once per equation
# while lowering and once per value in its optimisation passes: quadratic in
# the graph's size (the tiny test model's conversion took over 15 minutes;
# its graph has ~34k nodes and ~22k initializers). An onnx_ir value knows
# its producer, a node its graph, and the graph keeps its initializers by
# name, so a faster check answers first and the original runs only when it
# says no. (module, function, faster version)
_JAX2ONNX_SPEEDUPS = (
    ("jax2onnx.converter.output_binding", "_value_is_graph_connected",
     _fast_value_is_graph_connected),
    ("jax2onnx.converter.optimizer_graph_utils", "_producer_node", _fast_producer_node),
    ("jax2onnx.converter.ir_optimizations", "_producer_node", _fast_producer_node),
    ("jax2onnx.converter.conv_transpose_bias_folding", "_producer_node", _fast_producer_node),
    ("jax2onnx.plugins.jax.lax.broadcast_in_dim", "_materialize_constant_array",
     _fast_materialize_constant_array),
)


@contextlib.contextmanager
def _quiet_loggers(*names):
  """Errors only from these loggers for a while: jax2onnx logs its settings
  and plugin discovery at INFO, and onnx_ir a warning for every
  intermediate value it writes without a dtype (thousands for R50-FPN),
  none of which a user can act on."""
  loggers = [logging.getLogger(n) for n in names]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


@contextlib.contextmanager
def _jax2onnx_speedups():
  """Installs ``_JAX2ONNX_SPEEDUPS`` for one conversion; a module or
  function a jax2onnx version does not have is left alone."""
  saved = []
  for module_name, name, faster in _JAX2ONNX_SPEEDUPS:
    try:
      module = importlib.import_module(module_name)
    except ImportError:
      continue
    original = getattr(module, name, None)
    if original is not None:
      saved.append((module, name, original))
      setattr(module, name, faster(original))
  try:
    yield
  finally:
    for module, name, original in saved:
      setattr(module, name, original)


def describe(outputs: Mapping[str, Any]) -> dict:
  meaning = {
      "boxes": "xyxy in input canvas pixels (divide by the resize ratio for the original image)",
      "scores": "detection score (class probability)",
      "labels": "dataset category id (0 where not valid)",
      "valid": "True for the first num_detections entries; the rest is padding",
      "masks": "mask probabilities of the detected class in box coordinates (paste into the box)",
      "masks_canvas": "masks pasted into the canvas and thresholded at 0.5 (0/1)",
  }
  return {k: {"dtype": str(v.dtype), "shape": list(v.shape), "meaning": meaning[k]}
          for k, v in outputs.items()}


def export(model, variables, spec: InputSpec, *, class_names: Sequence[str],
           label_to_category_id: Mapping[int, int] | None, output_dir: str,
           formats: Sequence[str] = FORMATS, batch: int = 1, canvas=None,
           masks_canvas: bool = False, overwrite: bool = False, config_name: str = "",
           platforms: Sequence[str] = ("cpu", "cuda")) -> dict:
  """Writes the artifacts of ``formats`` and ``export.json`` into
  ``output_dir``; returns the export.json contents."""
  formats, canvas = check_arguments(formats, canvas, output_dir, overwrite)
  canvas = canvas or parse_canvas(spec.canvases[0])
  if batch < 1:
    raise ValueError(f"--batch must be >= 1, got {batch}")
  if os.path.exists(output_dir):  # allowed by overwrite
    shutil.rmtree(output_dir)
  os.makedirs(output_dir)
  table = label_table(len(class_names), label_to_category_id)
  serve = serving_function(model, variables, spec, table, masks_canvas)
  outputs = jax.eval_shape(serve, *_spec_args(batch, canvas))
  files = {}
  if "stablehlo" in formats:
    export_stablehlo(serve, batch, canvas, os.path.join(output_dir, "model.stablehlo"),
                     platforms)
    files["stablehlo"] = "model.stablehlo"
  if "savedmodel" in formats:
    export_savedmodel(serve, batch, canvas, os.path.join(output_dir, "saved_model"), platforms)
    files["savedmodel"] = "saved_model"
  if "onnx" in formats:
    serve = serving_function(with_per_image_nms(model), variables, spec, table, masks_canvas)
    export_onnx(serve, batch, canvas, os.path.join(output_dir, "model.onnx"), list(outputs))
    files["onnx"] = "model.onnx"
  info = {
      "format_version": EXPORT_VERSION,
      "config": config_name,
      "files": files,
      "platforms": list(platforms),
      "batch": batch,
      "canvas": list(canvas),
      "input": {"resize": "scale = min(min_size / min(H, W), max_size / max(H, W)); "
                          "(h, w) = floor((H, W) * scale) in double precision, bilinear "
                          "(half-pixel centres, no antialiasing)",
                "min_size": spec.eval_min_size, "max_size": spec.max_size,
                "mean": list(spec.mean), "std": list(spec.std)},
      "inputs": {"images": {"dtype": "uint8", "shape": [batch] + list(canvas) + [3],
                            "meaning": "RGB, resized image in the top-left corner"},
                 "image_sizes": {"dtype": "int32", "shape": [batch, 2],
                                 "meaning": "(h, w) of each resized image in the canvas"}},
      "outputs": describe(outputs),
      "class_names": list(class_names),
      "category_ids": table.tolist(),
      "score_threshold": float(model.box_head.score_threshold),
  }
  with open(os.path.join(output_dir, "export.json"), "w") as f:
    json.dump(info, f, indent=1)
  # The numpy helper (resize into the input, map detections back), standalone.
  shutil.copy(client.__file__, os.path.join(output_dir, "client.py"))
  return info
