"""torchvision's detection families convert: every key and shape of the real
state_dicts of fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn(_v2) and
keypointrcnn_resnet50_fpn (tests/data/torchvision_state_dict_keys.json, made
by scripts/make_reference_fixtures.py --keypoints) lands on exactly one
variable of the matching experiment config, nothing left over or missing,
with the right layout. (Numerical parity: scripts/check_torchvision_parity.py
--model ...)"""

import importlib
import json
import os
import sys

import numpy as np
import pytest
from flax import traverse_util

from mrcnn_jax.model import build_model, variables_template
from mrcnn_jax.weights import convert_state_dict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
KEYS = os.path.join(os.path.dirname(__file__), "data", "torchvision_state_dict_keys.json")

FAMILIES = {
    "fasterrcnn_resnet50_fpn": "faster_rcnn_r50_fpn",
    "maskrcnn_resnet50_fpn": "mask_rcnn_r50_fpn",
    "maskrcnn_resnet50_fpn_v2": "mask_rcnn_r50_fpn_v2",
    "keypointrcnn_resnet50_fpn": "keypoint_rcnn_r50_fpn",
}


@pytest.fixture(scope="module")
def tv_keys():
  with open(KEYS) as f:
    return json.load(f)


def convert(family, tv_keys, kind="maskrcnn"):
  config = importlib.import_module(FAMILIES[family]).get_config()
  template = variables_template(build_model(config.model))
  rng = np.random.default_rng(0)
  sd = {k: rng.standard_normal(s).astype(np.float32) if s else np.array(3)
        for k, s in tv_keys[family].items()}
  out = convert_state_dict(sd, template, kind=kind)
  flat = {c: traverse_util.flatten_dict(v) for c, v in out.items()}
  return sd, flat


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_key_converts(family, tv_keys):
  sd, flat = convert(family, tv_keys)  # raises on any missing / unexpected / mis-shaped
  p = flat["params"]
  np.testing.assert_array_equal(p[("rpn", "conv_0", "kernel")],
                                sd["rpn.head.conv.0.0.weight"].transpose(2, 3, 1, 0))
  assert (("mask_head", "head", "mask_fcn1", "kernel") in p) == ("mask" in family)
  assert (("keypoint_head", "head", "conv_fcn8", "kernel") in p) == ("keypoint" in family)


def test_v2_batchnorm_and_conv_box_head(tv_keys):
  sd, flat = convert("maskrcnn_resnet50_fpn_v2", tv_keys)
  p, bs = flat["params"], flat["batch_stats"]
  np.testing.assert_array_equal(bs[("neck", "inner_2_norm", "mean")],
                                sd["backbone.fpn.inner_blocks.2.1.running_mean"])
  np.testing.assert_array_equal(p[("neck", "layer_0_norm", "scale")],
                                sd["backbone.fpn.layer_blocks.0.1.weight"])
  np.testing.assert_array_equal(p[("rpn", "conv_1", "bias")], sd["rpn.head.conv.1.0.bias"])
  np.testing.assert_array_equal(bs[("box_head", "head", "conv4_norm", "var")],
                                sd["roi_heads.box_head.3.1.running_var"])
  np.testing.assert_array_equal(bs[("mask_head", "head", "mask_fcn2_norm", "mean")],
                                sd["roi_heads.mask_head.1.1.running_mean"])
  # The fc after 4 convs is Sequential index 5; its input is (C, h, w) in
  # torchvision, (h, w, C) here.
  w = sd["roi_heads.box_head.5.weight"]  # [1024, 256 * 7 * 7]
  ours = p[("box_head", "head", "fc6", "kernel")]  # [7 * 7 * 256, 1024]
  np.testing.assert_array_equal(ours[(2 * 7 + 3) * 256 + 5], w[:, 5 * 49 + 2 * 7 + 3])


def test_keypoint_head_layout(tv_keys):
  sd, flat = convert("keypointrcnn_resnet50_fpn", tv_keys, kind="keypointrcnn")
  p = flat["params"]
  np.testing.assert_array_equal(p[("keypoint_head", "head", "conv_fcn8", "kernel")],
                                sd["roi_heads.keypoint_head.14.weight"].transpose(2, 3, 1, 0))
  w = sd["roi_heads.keypoint_predictor.kps_score_lowres.weight"]  # [in, out, 4, 4]
  np.testing.assert_array_equal(p[("keypoint_head", "head", "kps_score_lowres_kernel")],
                                w.transpose(2, 3, 0, 1))
  assert p[("box_head", "predictor", "cls_score", "bias")].shape == (2,)
