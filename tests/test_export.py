"""Export on a tiny model (the torchvision-layout fixture converted, score
threshold 0 so there are detections): StableHLO, TF SavedModel and ONNX
artifacts, exported once for the module, each loaded in a subprocess that
never imports mrcnn_jax, give the JAX model's detections; bad arguments are
clear errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mrcnn_jax import client, experiment, export
from mrcnn_jax.input_spec import InputSpec
from mrcnn_jax.model import variables_template
from mrcnn_jax.torch_io import load_torch_state_dict
from mrcnn_jax.weights import convert_state_dict

from helpers import tiny_config

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "tiny_maskrcnn.pth")

# Run in the subprocess: the shipped numpy client prepares real-size images
# (the same input the test gives the JAX model) and maps detections back.
CLIENT = (
    "sys.path.insert(0, d); import client\n"
    "info = client.load_export_info(d)\n"
    "raw = [np.load(os.path.join(os.getcwd(), 'in.npz'))[k] for k in ('raw0', 'raw1')]\n"
    "images2, sizes2, originals = client.prepare(raw, info)\n"
    "assert (images2 == images).all() and (sizes2 == sizes).all(), 'client input differs'\n")

LOADERS = {
    "stablehlo": (
        "from jax import export\n"
        "exp = export.deserialize(open(os.path.join(d, 'model.stablehlo'), 'rb').read())\n"
        "out = exp.call(images, sizes)\n"),
    "savedmodel": (
        "import tensorflow as tf\n"
        "fn = tf.saved_model.load(os.path.join(d, 'saved_model')).signatures['serving_default']\n"
        "out = fn(images=tf.constant(images), image_sizes=tf.constant(sizes))\n"),
    "onnx": (
        "import onnxruntime as ort\n"
        "sess = ort.InferenceSession(os.path.join(d, 'model.onnx'),\n"
        "                            providers=['CPUExecutionProvider'])\n"
        "out = dict(zip([o.name for o in sess.get_outputs()],\n"
        "               sess.run(None, {'images': images, 'image_sizes': sizes})))\n"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  c = tiny_config()
  model = experiment.build_model(c, roi_heads__box__score_threshold=0.0)
  variables = convert_state_dict(load_torch_state_dict(FIXTURE), variables_template(model))
  spec = InputSpec.from_config(c.data)
  names = ("background", "square", "circle", "triangle")
  label_map = {1: 7, 2: 8, 3: 9}  # category ids unlike the labels
  out_dir = str(tmp_path_factory.mktemp("export") / "out")
  info = export.export(model, variables, spec, class_names=names,
                       label_to_category_id=label_map, output_dir=out_dir, batch=2,
                       masks_canvas=True, config_name="tiny")
  # Images the resize leaves as they are (min_size = max_size = 64), so the
  # client's prepared input is exactly this one.
  rng = np.random.default_rng(0)
  raw = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
         rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)]
  images = np.zeros((2, 64, 64, 3), np.uint8)
  images[0] = raw[0]
  images[1, :48, :64] = raw[1]
  sizes = np.asarray([[64, 64], [48, 64]], np.int32)
  # The reference: the model itself on the pipeline's input (normalised,
  # zero outside each image), with the export's label -> category id map and
  # masks pasted into the canvas by the numpy client (torchvision's rule,
  # as ops.masks.paste_masks inside the artifact).
  x = (images / 255.0 - np.asarray(spec.mean)) / np.asarray(spec.std)
  x[1, 48:] = 0
  ref = jax.device_get(jax.jit(model.apply)(variables, x.astype(np.float32), sizes))
  ref = {k: ref[k] for k in ("boxes", "scores", "labels", "valid", "masks")}
  ref["labels"] = np.where(ref["valid"], np.asarray([0, 7, 8, 9])[ref["labels"]], 0).astype(
      np.int32)
  ref["masks_canvas"] = np.stack([
      (client.paste_masks(m, b, (64, 64)) & v[:, None, None]).astype(np.uint8)
      for m, b, v in zip(ref["masks"], ref["boxes"], ref["valid"])])
  assert ref["valid"].sum() > 0
  return out_dir, info, images, sizes, ref, raw


def test_export_json_describes_the_interface(exported):
  out_dir, info, *_ = exported
  with open(os.path.join(out_dir, "export.json")) as f:
    assert json.load(f) == json.loads(json.dumps(info))
  assert info["inputs"]["images"]["shape"] == [2, 64, 64, 3]
  assert info["outputs"]["labels"]["dtype"] == "int32"
  assert info["category_ids"] == [0, 7, 8, 9] and info["platforms"] == ["cpu", "cuda"]
  assert set(info["files"]) == {"stablehlo", "savedmodel", "onnx"}


def test_onnx_is_one_file_holding_the_model_once(exported):
  """model.onnx carries its weights (no side file) and one copy of the model:
  tracing the serving function once per output had put five into it (the
  R50-FPN file was 936 MB next to the StableHLO's 174)."""
  out_dir, info, *_ = exported
  assert sorted(os.listdir(out_dir)) == sorted(
      ["client.py", "export.json", "model.onnx", "model.stablehlo", "saved_model"])
  size = {f: os.path.getsize(os.path.join(out_dir, f)) for f in ("model.onnx", "model.stablehlo")}
  # ONNX's graph is the larger share of this tiny model's file (2.2x the
  # StableHLO's, 1.2x for shapes and R50-FPN); five copies made it 5x more.
  assert size["model.onnx"] < 3 * size["model.stablehlo"], size


@pytest.mark.parametrize("fmt", sorted(LOADERS))
def test_artifact_runs_without_mrcnn_jax(exported, fmt, tmp_path):
  out_dir, info, images, sizes, ref, raw = exported
  np.savez(tmp_path / "in.npz", images=images, sizes=sizes, raw0=raw[0], raw1=raw[1])
  code = (
      "import os, sys, numpy as np\n"
      f"d = {out_dir!r}\n"
      f"inp = np.load({str(tmp_path / 'in.npz')!r}); images, sizes = inp['images'], inp['sizes']\n"
      + CLIENT + LOADERS[fmt] +
      "det = client.to_original({k: np.asarray(v)[1] for k, v in out.items()}, sizes[1], "
      "originals[1])\n"
      "assert det['masks'].shape[1:] == (48, 64) and det['masks'].dtype == bool\n"
      "assert not any(m.startswith('mrcnn_jax') for m in sys.modules), 'imported mrcnn_jax'\n"
      f"np.savez({str(tmp_path / 'out.npz')!r}, **{{k: np.asarray(v) for k, v in out.items()}})\n")
  env = dict(os.environ, PYTHONPATH="")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=str(tmp_path), env=env)
  got = dict(np.load(tmp_path / "out.npz"))
  assert set(got) == set(ref)
  # the interface export.json promises: names, dtypes, shapes
  assert {k: (str(v.dtype), list(v.shape)) for k, v in got.items()} == {
      k: (v["dtype"], v["shape"]) for k, v in info["outputs"].items()}
  np.testing.assert_array_equal(got["valid"], ref["valid"])
  np.testing.assert_array_equal(got["labels"], ref["labels"])
  np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=1e-3)
  np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4)
  np.testing.assert_allclose(got["masks"], ref["masks"], atol=1e-4)
  assert (got["masks_canvas"] != ref["masks_canvas"]).mean() < 1e-3


def test_bad_arguments_are_clear_errors(tmp_path, monkeypatch):
  out_dir = str(tmp_path)  # exists
  with pytest.raises(ValueError, match="unknown export format"):
    export.parse_formats("stablehlo,tflite")
  with pytest.raises(ValueError, match="not divisible by the backbone's stride 32"):
    export.parse_canvas("100x128")
  c = tiny_config()
  model = experiment.build_model(c)
  with pytest.raises(FileExistsError, match="--overwrite"):
    export.export(model, {}, InputSpec.from_config(c.data), class_names=("a", "b"),
                  label_to_category_id=None, output_dir=out_dir)
  # the onnx format without the export extra
  find_spec = export.importlib.util.find_spec
  monkeypatch.setattr(export.importlib.util, "find_spec",
                      lambda name, *a: None if name == "jax2onnx" else find_spec(name, *a))
  with pytest.raises(ImportError, match=r"mrcnn_jax\[export\]"):
    export.check_arguments("stablehlo,onnx", None, out_dir + "_new", False)


def test_cli_checks_arguments_before_loading_anything(exported, tmp_path):
  from mrcnn_jax import cli
  out_dir, *_ = exported
  cfg = tmp_path / "tiny.py"
  cfg.write_text("from helpers import tiny_config\n\ndef get_config():\n  return tiny_config()\n")
  base = ["export", "--config", str(cfg), "--checkpoint", str(tmp_path / "missing")]
  with pytest.raises(ValueError, match="unknown export format"):
    cli.main(base + ["--output", str(tmp_path / "o"), "--formats", "onnx2"])
  with pytest.raises(ValueError, match="not divisible"):
    cli.main(base + ["--output", str(tmp_path / "o"), "--canvas", "65x64"])
  with pytest.raises(FileExistsError, match="--overwrite"):
    cli.main(base + ["--output", out_dir])


def test_cli_names_what_does_not_fit_the_config(tmp_path):
  from mrcnn_jax import checkpoints, cli
  c = tiny_config()
  template = variables_template(experiment.build_model(c))
  ckpt = str(tmp_path / "converted")
  checkpoints.save_variables(ckpt, convert_state_dict(load_torch_state_dict(FIXTURE), template))
  cfg = tmp_path / "tiny.py"
  cfg.write_text("from helpers import tiny_config\n\ndef get_config():\n  return tiny_config()\n")
  with pytest.raises(ValueError, match=r"does not fit the model(.|\n)*mis-shaped(.|\n)*"
                                       r"box_head/head/fc6/kernel"):
    cli.main(["export", "--config", str(cfg), "--checkpoint", ckpt, "--output",
              str(tmp_path / "o"), "--config.model.roi_heads.box.fc_dim=48"])
  assert not os.path.exists(tmp_path / "o")


def test_savedmodel_hook_missing_is_a_clear_error(monkeypatch):
  from jax._src.export import _export
  monkeypatch.delattr(_export, "_module_to_bytecode")
  with pytest.raises(RuntimeError, match="private JAX hook"):
    with export._stablehlo_target("1.0.0"):
      pass
