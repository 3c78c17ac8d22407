"""Keypoint ops against torchvision's own outputs (tests/data/
torchvision_keypoints.npz, made by scripts/make_reference_fixtures.py
--keypoints): heatmap targets, the loss, decoding, the predictor."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax.ops import keypoints as kp_ops

DATA = os.path.join(os.path.dirname(__file__), "data", "torchvision_keypoints.npz")


@pytest.fixture(scope="module")
def ref():
  return {k: np.asarray(v, np.float32) if v.dtype == np.float16 else v
          for k, v in np.load(DATA).items()}


def test_targets_match_torchvision(ref):
  t, v = kp_ops.keypoint_targets(ref["targets/keypoints"], ref["targets/rois"], 56)
  np.testing.assert_array_equal(np.asarray(v), ref["targets/valid"].astype(bool))
  np.testing.assert_array_equal(np.asarray(t), ref["targets/heatmaps"])
  assert 0 < np.asarray(v).sum() < v.size  # both kinds present


def test_loss_matches_torchvision(ref):
  rois = np.concatenate([ref["loss/rois0"], ref["loss/rois1"]])
  gt = np.concatenate([ref["loss/gt0"][ref["loss/matched0"]],
                       ref["loss/gt1"][ref["loss/matched1"]]])
  t, v = kp_ops.keypoint_targets(gt, rois, 56)
  loss = kp_ops.keypoint_loss(jnp.asarray(ref["loss/logits"]), t, v)
  np.testing.assert_allclose(float(loss), float(ref["loss/value"]), rtol=1e-5)
  # No valid target: zero, not NaN.
  assert float(kp_ops.keypoint_loss(jnp.asarray(ref["loss/logits"]), t, v & False)) == 0.0


def test_decoding_matches_torchvision(ref):
  maps, boxes = ref["decode/maps"], ref["decode/boxes"]
  kps, scores, exact = jax.jit(lambda m, b: kp_ops.heatmaps_to_keypoints(m, b, max_size=1024))(
      maps, boxes)
  assert bool(np.all(exact))
  want = ref["decode/keypoints"]
  np.testing.assert_allclose(np.asarray(kps), want, atol=1e-3)
  np.testing.assert_allclose(np.asarray(scores), ref["decode/scores"], atol=1e-4, rtol=1e-5)


def test_decoding_certificate_reports_too_few_cells(ref):
  maps, boxes = ref["decode/maps"], ref["decode/boxes"]
  _, _, exact = jax.jit(lambda m, b: kp_ops.heatmaps_to_keypoints(m, b, 1024, num_cells=1))(
      maps[:4], boxes[:4])
  assert not bool(np.all(exact))


def test_predictor_deconv_and_upsampling(ref):
  from mrcnn_jax.model.keypoint_head import keypoint_predictor
  w = np.transpose(ref["predictor/weight"], (2, 3, 0, 1))  # torch [in, out, kh, kw]
  y = keypoint_predictor(jnp.asarray(ref["predictor/x"]), jnp.asarray(w),
                         jnp.asarray(ref["predictor/bias"]))
  np.testing.assert_allclose(np.asarray(y), ref["predictor/y"], atol=1e-5, rtol=1e-5)
