"""mrcnn_jax.stages: every inference stage of a tiny model agrees with the
model's own output, the RPN candidates before NMS are the ones its NMS
thins, the maps have the grid's shape, and on an image RoIAlign follows a
region better than RoIPool."""

import jax
import numpy as np
import pytest

from mrcnn_jax import experiment, stages
from mrcnn_jax.model import init_params
from mrcnn_jax.ops.roi_align import roi_align

from helpers import synthetic_batch, tiny_config


@pytest.fixture(scope="module")
def tiny():
  c = tiny_config()
  # The model, batch size and canvas of inspect_model's quick mode, so that
  # the persistent compilation cache serves one compile to both.
  model = experiment.build_model(c)
  variables = init_params(model, jax.random.PRNGKey(0))
  batch = synthetic_batch(np.random.default_rng(0), batch_dims=(1,))
  out = stages.run_stages(model, variables, batch["image"], batch["image_size"])
  return model, variables, batch, out


def test_stages_match_the_model(tiny):
  model, variables, batch, out = tiny
  ref = jax.device_get(jax.jit(model.apply)(variables, batch["image"], batch["image_size"]))
  assert ref["valid"].any()
  for k in ("boxes", "scores", "labels", "valid", "masks"):
    np.testing.assert_allclose(out["detections"][k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
  np.testing.assert_allclose(out["proposals"]["boxes"], ref["proposals"], rtol=1e-5, atol=1e-4)
  levels = len(out["features"])
  assert levels == len(out["anchors"]) == len(out["rpn_objectness"]) == len(out["candidates"]) == 5
  for f, a, o in zip(out["features"], out["anchors"], out["rpn_objectness"]):
    assert a.shape[0] == o.shape[1] == f.shape[1] * f.shape[2] * 3
  # anchors() gives the same anchors without running the model
  for a, b in zip(stages.anchors(model, variables, (64, 64)), out["anchors"]):
    np.testing.assert_array_equal(a, b)


def test_candidates_before_nms(tiny):
  model, _, _, out = tiny
  k = model.rpn.pre_nms_topk_test
  for logits, cand in zip(out["rpn_objectness"], out["candidates"]):
    n = min(k, logits.shape[1])
    assert cand["boxes"].shape == (1, n, 4)
    # the top-n objectness, sorted, as probabilities
    top = np.sort(logits, axis=1)[:, ::-1][:, :n]
    np.testing.assert_allclose(cand["scores"], 1 / (1 + np.exp(-top)), rtol=1e-5)
  # every proposal is one of the candidates (NMS only removes)
  allc = np.concatenate([c["boxes"][0] for c in out["candidates"]])
  props = out["proposals"]["boxes"][0][out["proposals"]["valid"][0]]
  d = np.abs(props[:, None, :] - allc[None]).max(-1).min(-1)
  assert (d < 1e-4).all()


def test_objectness_map_and_channel_rms():
  logits = np.arange(2 * 3 * 3, dtype=np.float32).reshape(-1) - 9  # (y, x, a) order
  m = stages.objectness_map(logits, (2, 3))
  assert m.shape == (2, 3)
  np.testing.assert_allclose(m[1, 2], 1 / (1 + np.exp(-8.0)))  # the last location's best anchor
  np.testing.assert_allclose(m[0, 0], 1 / (1 + np.exp(7.0)))
  with pytest.raises(ValueError, match="grid"):
    stages.objectness_map(logits, (4, 4))
  f = np.zeros((2, 2, 4), np.float32)
  f[1, 1] = [3, 4, 0, 0]
  np.testing.assert_allclose(stages.channel_rms(f), [[0, 0], [0, 2.5]])


def test_compare_poolers_roialign_follows_the_region():
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
  image = np.stack([np.sin(xx / 5), np.cos(yy / 7), (xx + yy) / 128], -1)
  image += 0.05 * rng.standard_normal(image.shape).astype(np.float32)
  boxes = np.array([[3.3, 5.7, 30.1, 26.9], [20.5, 13.2, 58.8, 61.0], [9.9, 40.2, 27.3, 59.6]],
                   np.float32)
  out = stages.compare_poolers(image, boxes, stride=8, output_size=7)
  for k in ("reference", "align", "warp", "pool"):
    assert out[k].shape == (3, 7, 7, 3)
  np.testing.assert_allclose(out["reference"], roi_align(image, boxes, 7, sampling_ratio=8,
                                                          aligned=True), rtol=1e-5, atol=1e-6)
  assert (out["error_align"] < out["error_pool"]).all()
  assert out["error_align"].mean() < out["error_warp"].mean()
  with pytest.raises(ValueError, match="stride"):
    stages.compare_poolers(image[:60], boxes, stride=8)
