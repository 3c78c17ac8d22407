"""The Flax model: backbone variants against torchvision's published sizes,
one-compile static-shape inference on a tiny config, freezing, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax.model import build_model, init_params
from mrcnn_jax.model.resnet import ResNet

TINY = dict(num_classes=4,
            backbone=dict(depth=18, norm="frozen_bn", freeze_at=0),
            fpn=dict(channels=32),
            rpn=dict(anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
                     pre_nms_topk_test=200, post_nms_topk_test=50),
            roi_heads=dict(box=dict(fc_dim=64, detections_per_image=10, candidates=200),
                           mask=dict(conv_dims=(32, 32), deconv_dim=32)))


def count(tree, exclude=("mean", "var")):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return sum(int(np.prod(x.shape)) for p, x in flat if p[-1].key not in exclude)


# torchvision's parameter counts (classifier fc removed): resnet18 11,689,512,
# resnet34 21,797,672, resnet50 25,557,032, resnet101 44,549,160, resnet152
# 60,192,808, resnext101_32x8d 88,791,336.
@pytest.mark.parametrize("depth,groups,wpg,expected", [
    (18, 1, 64, 11_689_512 - 513_000),
    (34, 1, 64, 21_797_672 - 513_000),
    (50, 1, 64, 25_557_032 - 2_049_000),
    (101, 1, 64, 44_549_160 - 2_049_000),
    (152, 1, 64, 60_192_808 - 2_049_000),
    (101, 32, 8, 88_791_336 - 2_049_000),
])
def test_backbone_sizes_match_torchvision(depth, groups, wpg, expected):
  net = ResNet(depth=depth, groups=groups, width_per_group=wpg)
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  assert count(shapes["params"]) == expected
  feats = jax.eval_shape(net.apply, shapes, jnp.zeros((1, 64, 96, 3)))
  mult = 1 if depth < 50 else 4
  assert [f.shape for f in feats] == [(1, 16, 24, 64 * mult), (1, 8, 12, 128 * mult),
                                      (1, 4, 6, 256 * mult), (1, 2, 3, 512 * mult)]


@pytest.fixture(scope="module")
def tiny():
  model = build_model(TINY)
  variables = init_params(model, jax.random.PRNGKey(0))
  return model, variables


def test_initialize_makes_the_variables_of_a_forward_pass():
  """``init_params`` goes through ``MaskRCNN.initialize`` (each part once,
  no NMS): the same tree and the same values, bit for bit, as ``model.init``
  through ``__call__``, for a model with every kind of variable (trainable
  BatchNorm statistics in the backbone and FPN, box, mask and keypoint
  heads)."""
  cfg = dict(TINY, keypoint_on=True, backbone=dict(depth=18, norm="bn", freeze_at=0),
             fpn=dict(channels=32, norm="bn"))
  model = build_model(cfg)
  rng = jax.random.PRNGKey(7)
  images, sizes = jnp.zeros((1, 64, 64, 3)), jnp.asarray([[64, 64]], jnp.int32)
  through_call = jax.jit(model.init)(rng, images, sizes)
  fast = init_params(model, rng)
  assert jax.tree.structure(fast) == jax.tree.structure(through_call)
  assert {"params", "batch_stats"} <= set(fast)
  assert "keypoint_head" in fast["params"] and "mask_head" in fast["params"]
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(through_call)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_inference_static_shapes_one_compile(tiny):
  model, variables = tiny
  traces = []

  @jax.jit
  def infer(v, x, s):
    traces.append(1)
    return model.apply(v, x, s)

  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((2, 96, 128, 3)), jnp.float32)
  sizes = jnp.asarray([[96, 128], [70, 100]], jnp.int32)
  out = infer(variables, images, sizes)
  out2 = infer(variables, images * 0.5, jnp.asarray([[50, 60], [96, 128]], jnp.int32))
  assert len(traces) == 1
  d = model.box_head.detections_per_image
  assert out["boxes"].shape == (2, d, 4) and out["scores"].shape == (2, d)
  assert out["labels"].dtype == jnp.int32 and out["valid"].dtype == jnp.bool_
  assert out["masks"].shape == (2, d, 28, 28)
  assert out["proposals"].shape == (2, 50, 4)
  for o, s in ((out, sizes), (out2, jnp.asarray([[50, 60], [96, 128]]))):
    b = np.asarray(o["boxes"])
    assert np.isfinite(b).all() and np.isfinite(np.asarray(o["masks"])).all()
    # clipped to each image's true size, not the canvas
    assert (b[..., 0::2] <= np.asarray(s)[:, None, 1:2] + 1e-4).all()
    assert (b[..., 1::2] <= np.asarray(s)[:, None, 0:1] + 1e-4).all()
    p = np.asarray(o["proposals"])
    assert (p[..., 0::2] <= np.asarray(s)[:, None, 1:2] + 1e-4).all()
    v = np.asarray(o["valid"])
    assert ((np.asarray(o["labels"]) >= 1) | ~v).all()
    assert (np.asarray(o["scores"])[v] > model.box_head.score_threshold).all()


def test_bad_input_errors(tiny):
  model, variables = tiny
  sizes = jnp.asarray([[64, 64]])
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    model.apply(variables, jnp.zeros((64, 64, 3)), sizes)
  with pytest.raises(TypeError, match="floating"):
    model.apply(variables, jnp.zeros((1, 64, 64, 3), jnp.uint8), sizes)
  with pytest.raises(ValueError, match="multiple of 32"):
    model.apply(variables, jnp.zeros((1, 60, 64, 3)), sizes)
  with pytest.raises(ValueError, match="image_sizes"):
    model.apply(variables, jnp.zeros((1, 64, 64, 3)), jnp.asarray([64, 64]))


def test_blank_image_no_nan(tiny):
  model, variables = tiny
  # jitted: run op by op, the NMS and matching loops take a minute on a CPU
  out = jax.jit(model.apply)(variables, jnp.zeros((1, 64, 64, 3)), jnp.asarray([[64, 64]]))
  for k, v in out.items():
    assert np.isfinite(np.asarray(v, np.float32)).all(), k


def test_freeze_at_stops_gradients():
  net = ResNet(depth=18, freeze_at=2)
  x = jnp.ones((1, 64, 64, 3))
  v = net.init(jax.random.PRNGKey(0), x)
  g = jax.grad(lambda p: sum(f.sum() for f in net.apply({"params": p}, x)))(v["params"])
  assert float(jnp.abs(g["conv1"]["kernel"]).sum()) == 0.0
  assert float(jnp.abs(g["layer1_0"]["conv1"]["kernel"]).sum()) == 0.0
  assert float(jnp.abs(g["layer2_0"]["conv1"]["kernel"]).sum()) > 0.0
  # frozen BN never gets gradients, even in trainable stages
  assert float(jnp.abs(g["layer3_0"]["bn1"]["scale"]).sum()) == 0.0


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_norm_options(norm):
  net = ResNet(depth=18, norm=norm, freeze_at=0)
  x = jnp.ones((2, 64, 64, 3))
  v = net.init(jax.random.PRNGKey(0), x)
  if norm == "bn":
    assert "batch_stats" in v
    feats, upd = net.apply(v, x, train=True, mutable=["batch_stats"])
    assert "batch_stats" in upd
  else:
    assert "batch_stats" not in v
    feats = net.apply(v, x)
  assert feats[-1].shape == (2, 2, 2, 512)


def test_unknown_config_field():
  with pytest.raises(ValueError, match="unknown fields"):
    build_model(dict(TINY, not_a_field=1))


def test_rpn_head_depth_is_not_capped_by_the_number_of_levels():
  """conv_depth deeper than the 5 FPN levels still builds conv_depth convs,
  shared by every level (it used to be zipped with the levels)."""
  from mrcnn_jax.model.rpn import RPN
  feats = [jnp.zeros((1, s, s, 8)) for s in (16, 8, 4, 2, 1)]
  head = RPN(conv_depth=7)
  params = head.init(jax.random.PRNGKey(0), feats)["params"]
  assert sorted(k for k in params if k.startswith("conv_")) == [f"conv_{i}" for i in range(7)]
  logits, deltas = head.apply({"params": params}, feats)
  assert [l.shape for l in logits] == [(1, s * s * 3) for s in (16, 8, 4, 2, 1)]


def test_nested_config_overrides_from_the_cli_reach_every_part():
  from mrcnn_jax.cli import apply_overrides
  from mrcnn_jax.model import default_model_config
  import ml_collections
  c = ml_collections.ConfigDict({"model": default_model_config()})
  apply_overrides(c, ["--config.model.backbone.depth=101", "--config.model.fpn.norm=gn",
                      "--config.model.roi_heads.mask.rois_per_image=32",
                      "--config.model.rpn.anchor_sizes=((8,),(16,),(32,),(64,),(128,))"])
  model = build_model(c.model)
  assert model.backbone.depth == 101 and model.neck.norm == "gn"
  assert model.mask_head.rois_per_image == 32 and model.rpn.anchor_sizes[0] == (8,)
  # defaults come from the parts themselves
  assert model.box_head.pool_size == 7 and model.mask_head.pool_size == 14
  assert model.roi_sampler.batch_per_image == 512 and model.rpn.batch_per_image == 256


def test_flat_config_of_the_older_layout_is_a_clear_error():
  with pytest.raises(ValueError, match=r"flat layout.*box_pool_size -> roi_heads\.box\.pool_size"):
    build_model({"num_classes": 4, "box_pool_size": 7})


def test_mask_head_is_optional():
  model = build_model(dict(TINY, mask_on=False))
  v = init_params(model, jax.random.PRNGKey(0))
  assert "mask_head" not in v["params"]
  out = jax.jit(model.apply)(v, jnp.zeros((1, 64, 64, 3)), jnp.asarray([[64, 64]]))
  assert "masks" not in out and out["boxes"].shape == (1, 10, 4)


def test_an_instance_head_plugs_in_without_editing_mask_rcnn():
  """A head with the instance-head interface (here a toy one that predicts a
  per-detection scalar and trains it towards the box area) given to
  MaskRCNN: its outputs appear at inference, its loss in training."""
  import flax.linen as nn
  from mrcnn_jax import train
  from mrcnn_jax.model.roi_heads import Pooler

  class AreaHead(nn.Module):
    pooler: Pooler = Pooler()

    @nn.compact
    def __call__(self, features, rois, canvas, batch_index=None, train=False):
      x = self.pooler(features, rois, canvas, 4, batch_index)
      return nn.Dense(1, name="fc")(x.reshape(x.shape[:-3] + (-1,)))[..., 0]

    def predict(self, features, canvas, dets):
      return {"area_pred": self(features, dets["boxes"], canvas)}

    def train_outputs(self, features, canvas, targets, gt):
      rois = targets["roi_boxes"]
      return {"area_pred_train": self(features, rois, canvas, train=True),
              "area_target": (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1])}

    @staticmethod
    def losses(outputs, num_images):
      err = outputs["area_pred_train"] - outputs["area_target"] / 1e3
      return {"loss_area": jnp.mean(err ** 2)}

  base = build_model(TINY)
  model = base.clone(keypoint_head=AreaHead())
  v = init_params(model, jax.random.PRNGKey(0))
  assert "fc" in v["params"]["keypoint_head"]
  out = jax.jit(model.apply)(v, jnp.zeros((1, 64, 64, 3)), jnp.asarray([[64, 64]]))
  assert out["area_pred"].shape == (1, 10) and "masks" in out
  from helpers import synthetic_batch
  b = synthetic_batch(np.random.default_rng(0), batch_dims=(2,))
  losses, _ = jax.jit(lambda v, b: model.apply(
      v, b["image"], b["image_size"], train.batch_ground_truth(b), jax.random.PRNGKey(0),
      method=model.train_losses))(v, b)
  assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask",
                         "loss_area"}
  assert np.isfinite(float(losses["loss_area"]))
