"""Executes every notebook of experiments/notebooks top to bottom (nbclient,
the jupytext ``.py`` that is paired with the ``.ipynb``) in quick mode
(``MRCNN_NOTEBOOK_QUICK=1``: experiments/shapes_tiny.py) on a tiny shapes
dataset made here; any error fails the test. Each notebook must show images
and save the figures it promises; what it measured (``results.json``) is
checked too."""

import json
import os
import sys

import pytest

nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")
pytest.importorskip("matplotlib")
pytest.importorskip("ipykernel")
pytest.importorskip("tensorflow")

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NOTEBOOKS = os.path.join(REPO, "experiments", "notebooks")

# notebook -> the figures (PNG names) it must save
FIGURES = {
    "inspect_data": ["data_raw", "data_pipeline", "data_mask_crops", "data_counts",
                     "data_coco_format"],
    "inspect_model": ["model_fpn", "model_anchors", "model_objectness", "model_proposals",
                      "model_roi_pooling", "model_detections", "model_masks"],
    "train_step_by_step": ["train_losses", "train_targets", "train_predictions"],
    "use_a_model": ["use_predictions", "use_exported"],
}


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
  """The environment the notebooks' kernels inherit: quick mode, a tiny
  shapes dataset in its own TFDS dir, figures and workdirs under tmp."""
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import shapes_tiny
  from mrcnn_jax.data import shapes
  root = tmp_path_factory.mktemp("notebooks")
  c = shapes_tiny.get_config()
  shapes.shapes_builder(str(root / "tfds"), num_train=c.data.num_train,
                        num_validation=c.data.num_validation, seed=c.data.dataset_seed)
  return {
      "MRCNN_NOTEBOOK_QUICK": "1",
      "MRCNN_NOTEBOOK_DATA_DIR": str(root / "tfds"),
      "MRCNN_NOTEBOOK_FIGURES": str(root / "figures"),
      "MRCNN_NOTEBOOK_WORKDIR": str(root / "work"),
      "PYTHONPATH": os.pathsep.join([REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(
          os.pathsep) if p]),
  }


def _image_outputs(nb) -> int:
  return sum("image/png" in out.get("data", {})
             for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_draws(name, notebook_env, monkeypatch):
  for k, v in notebook_env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows images
  trained = os.path.join(notebook_env["MRCNN_NOTEBOOK_WORKDIR"], "train_step_by_step")
  if name == "use_a_model" and os.path.isdir(trained):
    # train_step_by_step's checkpoint (it ran first in this process): saves
    # a training run; without it use_a_model trains the tiny model itself.
    monkeypatch.setenv("MRCNN_NOTEBOOK_CHECKPOINT", trained)
  nb = jupytext.read(os.path.join(NOTEBOOKS, f"{name}.py"))
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": NOTEBOOKS}})
  client.execute()  # raises CellExecutionError on any error
  assert _image_outputs(nb) >= len(FIGURES[name]), "the notebook showed fewer images than promised"
  figures = notebook_env["MRCNN_NOTEBOOK_FIGURES"]
  for fig in FIGURES[name]:
    path = os.path.join(figures, f"{fig}.png")
    assert os.path.getsize(path) > 1000, path
  with open(os.path.join(figures, "results.json")) as f:
    results = json.load(f)[name]
  if name == "train_step_by_step":
    assert results["loss_last"] < results["loss_first"]
    assert results["restored_identical"] is True
    assert 0.0 <= results["bbox/AP"] <= 100.0
  elif name == "inspect_model":
    err = results["pooling_error"]
    assert err["align"] < err["pool"]  # RoIAlign follows the region better than RoIPool
    assert results["proposals_after_nms"] <= results["candidates_before_nms"]
  elif name == "use_a_model":
    assert results["images"] == 4
    assert results["weights"].startswith(("trained here", os.path.join(notebook_env[
        "MRCNN_NOTEBOOK_WORKDIR"], "train_step_by_step")))
    assert results["exported_same_detections"] is True
    assert results["exported_max_box_diff_px"] < 1e-3
  elif name == "inspect_data":
    assert sum(results["objects_per_class"].values()) > 0
    stats = results["coco_format_stats"]
    assert stats["skipped_empty_box"] == 1 and stats["skipped_unknown_category"] == 1
    assert stats["num_crowd"] == 1


def test_notebooks_are_paired_and_output_free():
  """Each .ipynb holds the cells of its .py and no outputs."""
  for name in FIGURES:
    py = jupytext.read(os.path.join(NOTEBOOKS, f"{name}.py"))
    ipynb = jupytext.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"))
    assert [c.source for c in py.cells] == [c.source for c in ipynb.cells], name
    for cell in ipynb.cells:
      if cell.cell_type == "code":
        assert not cell.get("outputs") and cell.get("execution_count") is None, name
