"""torchvision checkpoint conversion: layouts, old key names, error listing,
and the backbone-only import. (The end-to-end proof against torchvision
itself is scripts/check_torchvision_parity.py.)"""

import jax
import numpy as np
import pytest
from flax import traverse_util

from mrcnn_jax.model import build_model, init_params
from mrcnn_jax.weights import CheckpointMismatchError, convert_state_dict, torchvision_key

from test_model import TINY


def to_torch_layout(path, x):
  """Inverse of the conversion, written independently: flax -> torch layout."""
  x = np.asarray(x)
  if path[-1] != "kernel":
    return x
  if path[-2] == "conv5_mask":
    return x.transpose(2, 3, 0, 1)
  if path[-2] == "fc6":  # ours (h, w, C) flattened -> torchvision (C, h, w)
    h = w = 7
    c = x.shape[0] // 49
    return x.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(x.shape[1], -1)
  if x.ndim == 2:
    return x.T
  return x.transpose(3, 2, 0, 1)


@pytest.fixture(scope="module")
def tiny_vars():
  model = build_model(TINY)
  return init_params(model, jax.random.PRNGKey(0))


def fake_state_dict(variables, rng, kind="maskrcnn"):
  sd, expected = {}, {}
  for path, x in traverse_util.flatten_dict(variables["params"]).items():
    key = torchvision_key(path, kind)
    if key is None:
      continue
    val = rng.standard_normal(x.shape).astype(np.float32)
    expected[path] = val
    sd[key] = to_torch_layout(path, val)
  return sd, expected


def test_round_trip(tiny_vars):
  sd, expected = fake_state_dict(tiny_vars, np.random.default_rng(0))
  sd["backbone.body.bn1.num_batches_tracked"] = np.array(5)
  out = convert_state_dict(sd, tiny_vars)
  flat = traverse_util.flatten_dict(out["params"])
  assert set(flat) == set(expected)
  for p, v in expected.items():
    np.testing.assert_array_equal(flat[p], v, err_msg=str(p))


def test_fc6_permutation_semantics(tiny_vars):
  """fc6 on our (h, w, C) flattening equals torchvision's fc6 on (C, h, w)."""
  sd, _ = fake_state_dict(tiny_vars, np.random.default_rng(1))
  out = convert_state_dict(sd, tiny_vars)
  feat = np.random.default_rng(2).standard_normal((7, 7, 32)).astype(np.float32)
  ours = feat.reshape(-1) @ out["params"]["box_head"]["head"]["fc6"]["kernel"]
  theirs = sd["roi_heads.box_head.fc6.weight"] @ feat.transpose(2, 0, 1).reshape(-1)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_old_key_names(tiny_vars):
  sd, expected = fake_state_dict(tiny_vars, np.random.default_rng(0))
  old = {}
  for k, v in sd.items():
    k = k.replace("fpn.inner_blocks.0.0.", "fpn.inner_blocks.0.")
    k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
    k = k.replace("roi_heads.mask_head.1.0.", "roi_heads.mask_head.mask_fcn2.")
    old[k] = v
  assert "rpn.head.conv.weight" in old and "roi_heads.mask_head.mask_fcn2.weight" in old
  out = convert_state_dict(old, tiny_vars)
  np.testing.assert_array_equal(out["params"]["rpn"]["conv_0"]["kernel"],
                                expected[("rpn", "conv_0", "kernel")])


def test_all_problems_in_one_error(tiny_vars):
  sd, _ = fake_state_dict(tiny_vars, np.random.default_rng(0))
  del sd["roi_heads.box_predictor.cls_score.bias"]
  sd["roi_heads.extra.weight"] = np.zeros(3, np.float32)
  sd["rpn.head.cls_logits.weight"] = np.zeros((7, 32, 1, 1), np.float32)
  with pytest.raises(CheckpointMismatchError) as e:
    convert_state_dict(sd, tiny_vars, source="my.pth")
  msg = str(e.value)
  assert "my.pth" in msg
  assert "missing (1): roi_heads.box_predictor.cls_score.bias" in msg
  assert "unexpected (1): roi_heads.extra.weight" in msg
  assert "mis-shaped (1): rpn.head.cls_logits.weight" in msg


def test_backbone_only(tiny_vars):
  rng = np.random.default_rng(0)
  sd, expected = fake_state_dict(tiny_vars, rng, kind="backbone")
  assert "conv1.weight" in sd and "layer1.0.conv1.weight" in sd
  sd["fc.weight"] = np.zeros((1000, 512), np.float32)  # classifier: ignored
  sd["fc.bias"] = np.zeros((1000,), np.float32)
  out = convert_state_dict(sd, tiny_vars, kind="backbone")
  flat = traverse_util.flatten_dict(out["params"])
  for p, v in expected.items():
    np.testing.assert_array_equal(flat[p], v)
  # the rest keeps its initial value
  np.testing.assert_array_equal(out["params"]["neck"]["inner_0"]["kernel"],
                                tiny_vars["params"]["neck"]["inner_0"]["kernel"])
