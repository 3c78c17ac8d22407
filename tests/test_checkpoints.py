"""Checkpoints: templates from eval_shape, inference restore without an
optimizer, and checkpoints of the older variable layout (written by commit
5de4eff with scripts/make_legacy_checkpoint.py): they are migrated and give
the same detections and losses, and resuming training from one fails with a
message naming the older layout."""

import functools
import os
import shutil

import jax
import numpy as np
import pytest

from mrcnn_jax import checkpoints, experiment, train
from mrcnn_jax.model import variables_template

from helpers import tiny_config

LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy_layout1")


@pytest.fixture(scope="module")
def model():
  return experiment.build_model(tiny_config())


def test_older_layout_checkpoint_is_migrated_and_gives_the_same_answers(model):
  variables, step = checkpoints.restore_inference_variables(LEGACY, variables_template(model))
  assert step == 1 and set(variables["params"]) == {"backbone", "neck", "rpn", "box_head",
                                                    "mask_head"}
  exp = dict(np.load(os.path.join(LEGACY, "expected.npz")))
  det = jax.device_get(jax.jit(model.apply)(variables, exp["batch_image"],
                                            exp["batch_image_size"]))
  assert exp["det_valid"].sum() > 0
  np.testing.assert_array_equal(det["valid"], exp["det_valid"])
  np.testing.assert_array_equal(det["labels"], exp["det_labels"])
  np.testing.assert_allclose(det["boxes"], exp["det_boxes"], atol=1e-3)
  np.testing.assert_allclose(det["scores"], exp["det_scores"], atol=1e-5)
  np.testing.assert_allclose(det["masks"], exp["det_masks"], atol=1e-5)
  gt = train.batch_ground_truth({k[6:]: v for k, v in exp.items() if k.startswith("batch_")})
  losses, _ = jax.jit(functools.partial(model.apply, method=model.train_losses))(
      variables, exp["batch_image"], exp["batch_image_size"], gt, jax.random.PRNGKey(3))
  for k, v in losses.items():
    np.testing.assert_allclose(float(v), float(exp[f"loss_{k}"]), rtol=1e-4, err_msg=k)


def test_resuming_training_from_the_older_layout_says_so(model, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(LEGACY, workdir)
  c = tiny_config()
  template = variables_template(model)
  tx = train.make_optimizer(c, template["params"], model)
  mngr = checkpoints.checkpoint_manager(str(workdir))
  with pytest.raises(checkpoints.OlderLayoutError, match="older mrcnn_jax layout"):
    checkpoints.restore_train_state(mngr, train.train_state_template(template, tx))
  mngr.close()


def test_wrong_config_for_a_checkpoint_names_the_mismatch():
  c = tiny_config()
  c.model.fpn.channels = 24
  other = experiment.build_model(c)
  with pytest.raises(ValueError, match=r"(?s)does not fit the model.*mis-shaped"):
    checkpoints.restore_inference_variables(LEGACY, variables_template(other))


def test_templates_come_from_eval_shape(model):
  """No compute: every leaf of the templates is a ShapeDtypeStruct."""
  c = tiny_config()
  template = variables_template(model)
  tx = train.make_optimizer(c, template["params"], model)
  state = train.train_state_template(template, tx)
  for tree in (template, state):
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(tree))


def test_saved_variables_round_trip_and_legacy_dirs_migrate(model, tmp_path):
  variables, _ = checkpoints.restore_inference_variables(LEGACY, variables_template(model))
  legacy = {c: {} for c in variables}
  back = {v: k for k, v in checkpoints._LEGACY_MODULES.items()}
  from flax import traverse_util
  for c, tree in variables.items():
    flat = traverse_util.flatten_dict(tree)
    new = {}
    for p, x in flat.items():
      for n in (2, 1):
        if p[:n] in back:
          p = (back[p[:n]],) + p[n:]
          break
      new[p] = x
    legacy[c] = traverse_util.unflatten_dict(new)
  assert checkpoints.is_legacy_layout(legacy)
  checkpoints.save_variables(str(tmp_path / "old"), legacy)
  loaded = checkpoints.load_variables(str(tmp_path / "old"), variables_template(model))
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), loaded, variables)
  assert all(jax.tree_util.tree_leaves(same))
