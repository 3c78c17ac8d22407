"""The Flax model: backbone variants against torchvision's published sizes,
one-compile static-shape inference on a tiny config, freezing, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax.model import build_model, init_params
from mrcnn_jax.model.resnet import ResNet

TINY = dict(num_classes=4, depth=18, backbone_norm="frozen_bn", freeze_at=0, fpn_channels=32,
            anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
            rpn_pre_nms_topk_test=200, rpn_post_nms_topk_test=50, box_fc_dim=64,
            mask_conv_dims=(32, 32), mask_deconv_dim=32, detections_per_image=10,
            detection_candidates=200)


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
  d = model.detections_per_image
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
    assert (np.asarray(o["scores"])[v] > model.score_threshold).all()


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
  out = model.apply(variables, jnp.zeros((1, 64, 64, 3)), jnp.asarray([[64, 64]]))
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
  from mrcnn_jax.model.heads import RPNHead
  feats = [jnp.zeros((1, s, s, 8)) for s in (16, 8, 4, 2, 1)]
  head = RPNHead(num_anchors=3, conv_depth=7)
  params = head.init(jax.random.PRNGKey(0), feats)["params"]
  assert sorted(k for k in params if k.startswith("conv_")) == [f"conv_{i}" for i in range(7)]
  logits, deltas = head.apply({"params": params}, feats)
  assert [l.shape for l in logits] == [(1, s * s * 3) for s in (16, 8, 4, 2, 1)]
