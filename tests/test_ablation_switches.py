"""The paper's ablation switches as parts and config choices: the pooler
(RoIAlign / RoIWarp / RoIPool), the mask loss (sigmoid / softmax), the mask
head (FCN / MLP), the C4 (shared res5 RoI trunk) and C5 single-level models,
and the errors a wrong combination gives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax.model import build_model, init_params
from mrcnn_jax.model.fpn import LastLevel
from mrcnn_jax.model.heads import AvgPoolBoxHead, MaskMLPHead
from mrcnn_jax.model.resnet import ResNet, ResNetStage
from mrcnn_jax.model.roi_heads import Pooler
from mrcnn_jax.ops import losses
from mrcnn_jax.ops.roi_align import multilevel_roi_align
from mrcnn_jax.ops.roi_pool import multilevel_roi_pool
from mrcnn_jax.weights import torchvision_key

TINY = dict(num_classes=4,
            backbone=dict(depth=18, width=8, norm="gn", freeze_at=0),
            fpn=dict(channels=16),
            rpn=dict(anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
                     pre_nms_topk_train=100, post_nms_topk_train=50,
                     pre_nms_topk_test=100, post_nms_topk_test=30, batch_per_image=64),
            roi_heads=dict(batch_per_image=16,
                           box=dict(fc_dim=32, detections_per_image=10, candidates=60),
                           mask=dict(conv_dims=(16,), deconv_dim=16, rois_per_image=4)))
SINGLE_LEVEL = dict(neck="last", rpn=dict(TINY["rpn"], anchor_sizes=((16, 32, 64, 128),),
                                          aspect_ratios=((0.5, 1.0, 2.0),)))


def merged(base, **changes):
  out = dict(base)
  for k, v in changes.items():
    out[k] = merged(out[k], **v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


# ---- ops and layers on their own --------------------------------------------

def test_pooler_kinds_call_their_ops():
  rng = np.random.default_rng(0)
  feats = [jnp.asarray(rng.standard_normal((1, 64 // s, 64 // s, 2)), jnp.float32)
           for s in (4, 8, 16, 32, 64)]  # P6 is left out by the pooler
  boxes = jnp.asarray([[[1.3, 2.2, 20.7, 30.1], [0.0, 5.0, 63.0, 60.0]]], jnp.float32)

  @jax.jit
  def both(f, b):
    ops = (multilevel_roi_pool(f[:4], b, 3, canvas_size=(64, 64)),
           multilevel_roi_align(f[:4], b, 3, canvas_size=(64, 64), quantize=True),
           multilevel_roi_align(f[:4], b, 3, canvas_size=(64, 64)))
    return [Pooler(kind=k)(f, b, (64, 64), 3) for k in ("pool", "warp", "align")], ops

  poolers, ops = both(feats, boxes)
  for got, expected in zip(poolers, ops):
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  assert not np.allclose(poolers[1], poolers[2])  # warp is not align
  with pytest.raises(ValueError, match="roi_heads.pooler must be one of"):
    Pooler(kind="crop")


def _softmax_loss_numpy(logits, labels, targets):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  fg = np.take_along_axis(logp, labels[:, None, None, None], -1)[..., 0]
  return -(targets * fg + (1 - targets) * logp[..., 0]).mean(axis=(1, 2))


def test_mask_losses_hand_computed_and_gradients():
  rng = np.random.default_rng(0)
  n, m, k = 4, 3, 4
  labels = jnp.asarray([1, 3, 2, 1])
  targets = jnp.asarray(rng.integers(0, 2, (n, m, m)), jnp.float32)
  valid = jnp.asarray([True, True, True, False])
  batch_index = jnp.asarray([0, 0, 1, 1])
  # All-zero logits: softmax gives log K per pixel, sigmoid log 2.
  zeros = jnp.zeros((n, m, m, k))
  np.testing.assert_allclose(
      losses.mask_softmax_loss(zeros, labels, targets, valid, batch_index, 2), np.log(k),
      rtol=1e-6)
  np.testing.assert_allclose(
      losses.mask_loss(zeros, labels, targets, valid, batch_index, 2), np.log(2), rtol=1e-6)
  # Random logits against a numpy reference: image 0 averages RoIs 0, 1;
  # image 1 has only RoI 2 valid.
  logits = jnp.asarray(rng.standard_normal((n, m, m, k)), jnp.float32)
  per_roi = _softmax_loss_numpy(np.asarray(logits), np.asarray(labels), np.asarray(targets))
  expected = (per_roi[:2].mean() + per_roi[2]) / 2
  np.testing.assert_allclose(
      losses.mask_softmax_loss(logits, labels, targets, valid, batch_index, 2), expected,
      rtol=1e-5)
  # Sigmoid: only the ground-truth class's channel gets gradient; softmax:
  # every channel of the valid RoIs does (classes compete); an invalid slot
  # gets none under either.
  for fn, others in ((losses.mask_loss, False), (losses.mask_softmax_loss, True)):
    g = np.asarray(jax.grad(lambda x: fn(x, labels, targets, valid, batch_index, 2))(logits))
    onehot = np.asarray(jax.nn.one_hot(labels, k, dtype=bool))[:, None, None, :]
    assert (np.abs(np.where(onehot, g, 0.0))[:3].sum(axis=(1, 2, 3)) > 0).all()
    assert (np.abs(np.where(onehot, 0.0, g))[:3].sum() > 0) == others
    np.testing.assert_array_equal(g[3], 0.0)
  with pytest.raises(ValueError, match="per-class"):
    losses.mask_softmax_loss(logits[..., :1], labels, targets, valid, batch_index, 2)


def test_mlp_mask_head_and_avgpool_box_head():
  head = MaskMLPHead(num_classes=4, fc_dims=(32, 16))
  x = jnp.ones((2, 3, 7, 7, 5))
  v = head.init(jax.random.PRNGKey(0), x)
  out = head.apply(v, x)
  assert out.shape == (2, 3, 14, 14, 4)  # M = 2m, as the FCN head's
  sizes = {k: p["kernel"].shape for k, p in v["params"].items()}
  assert sizes == {"mask_fc1": (7 * 7 * 5, 32), "mask_fc2": (32, 16),
                   "mask_fc_logits": (16, 14 * 14 * 4)}
  assert MaskMLPHead(num_classes=4, class_agnostic=True, fc_dims=(8,)).init_with_output(
      jax.random.PRNGKey(0), x)[0].shape == (2, 3, 14, 14, 1)
  y = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 3, 2)
  np.testing.assert_allclose(AvgPoolBoxHead()(y), y.mean(axis=(1, 2)))


def test_res5_trunk_is_the_backbones_last_stage():
  """ResNetStage with the backbone's layer4 parameters maps C4 to C5."""
  net = ResNet(depth=18, width=8, norm="gn")
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  v = jax.jit(net.init)(jax.random.PRNGKey(0), x)
  trunk = ResNetStage(depth=18, width=8, norm="gn", stage=3)
  layer4 = {k: p for k, p in v["params"].items() if k.startswith("layer4")}

  @jax.jit
  def run(v, x):
    c2, c3, c4, c5 = net.apply(v, x)
    c4_only = ResNet(depth=18, width=8, norm="gn", num_stages=3).apply(v, x)
    return c4, c5, c4_only, trunk.apply({"params": layer4}, c4[:, None])  # a RoI axis

  c4, c5, c4_only, out = run(v, x)
  assert set(jax.eval_shape(trunk.init, jax.random.PRNGKey(0), c4)["params"]) == set(layer4)
  np.testing.assert_allclose(out[:, 0], c5, rtol=1e-5, atol=1e-5)
  assert len(c4_only) == 3
  np.testing.assert_array_equal(c4_only[-1], c4)
  c2, c3 = c4_only[:2]
  assert LastLevel()([c2, c3, c4]) == [c4]
  # ImageNet weights: layer4 converts into the trunk.
  assert torchvision_key(("box_head", "trunk", "layer4_0", "conv1", "kernel"),
                         "backbone") == "layer4.0.conv1.weight"


# ---- whole models -------------------------------------------------------------

def _run(model, rng, grads: bool):
  """Inference (detections and the mask logits of the detected boxes, in one
  program), and one training forward: finite losses, and (with ``grads``)
  gradients reaching every parameter group."""
  from helpers import synthetic_batch
  from mrcnn_jax import train
  v = init_params(model, jax.random.PRNGKey(0))
  x = jnp.asarray(rng.standard_normal((1, 64, 64, 3)), jnp.float32)

  @jax.jit
  def infer(v):
    out = model.apply(v, x, jnp.asarray([[64, 64]]))
    feats = model.apply(v, x, method=model.features)
    return out, model.apply(v, feats, out["boxes"], (64, 64), method=model.mask_outputs)

  out, logits = infer(v)
  b = synthetic_batch(rng, batch_dims=(2,))

  def loss(params):
    ls, _ = model.apply({"params": params}, b["image"], b["image_size"],
                        train.batch_ground_truth(b), jax.random.PRNGKey(0),
                        method=model.train_losses)
    return sum(ls.values()), ls

  if not grads:
    total, ls = jax.jit(loss)(v["params"])
  else:
    (total, ls), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
    for name, tree in g.items():
      assert float(sum(jnp.abs(x).sum() for x in jax.tree_util.tree_leaves(tree))) > 0, name
  assert np.isfinite(float(total))
  return v, out, logits, ls


def _detected_channel(values, labels):
  return np.take_along_axis(np.asarray(values), np.asarray(labels)[:, :, None, None, None],
                            axis=-1)[..., 0]


def test_c5_model_with_roi_pool_softmax_masks_and_mlp_head():
  cfg = merged(TINY, **SINGLE_LEVEL,
               roi_heads=dict(pooler="pool", mask=dict(loss="softmax", head="mlp",
                                                       fc_dims=(32,))))
  model = build_model(cfg)
  assert isinstance(model.neck, LastLevel) and model.box_head.pooler.kind == "pool"
  # (the ops' gradients are checked on their own: test_roi_pool, the losses above)
  v, out, logits, ls = _run(model, np.random.default_rng(0), grads=False)
  assert set(v["params"]) == {"backbone", "rpn", "box_head", "mask_head"}  # no neck params
  assert "layer4_1" in v["params"]["backbone"]  # C5: the backbone keeps res5
  assert set(v["params"]["mask_head"]["head"]) == {"mask_fc1", "mask_fc_logits"}
  assert out["masks"].shape == (1, 10, 28, 28)  # pooled 14 -> 28, as the FCN's
  # softmax masks: the detected class's softmax probability of each pixel
  np.testing.assert_allclose(
      out["masks"], _detected_channel(jax.nn.softmax(logits, axis=-1), out["labels"]),
      rtol=1e-5, atol=1e-6)
  assert set(ls) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}
  # The foreground readout of the same parameters: 1 - p(background).
  fg = build_model(merged(cfg, roi_heads=dict(mask=dict(softmax_readout="foreground"))))
  assert fg.mask_head.softmax_readout == "foreground"
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 64, 64, 3)), jnp.float32)
  masks = jax.jit(lambda v: fg.apply(v, x, jnp.asarray([[64, 64]])))(v)["masks"]  # _run's image
  np.testing.assert_allclose(masks, 1.0 - np.asarray(jax.nn.softmax(logits, axis=-1))[..., 0],
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(masks, out["masks"], atol=1e-3)  # the two readouts differ


def test_c4_model_shares_the_res5_trunk():
  cfg = merged(TINY, **SINGLE_LEVEL, backbone=dict(num_stages=3),
               roi_heads=dict(pooler="warp", trunk="res5",
                              box=dict(head="avgpool", pool_size=8),
                              mask=dict(conv_dims=(), pool_size=8)))
  model = build_model(cfg)
  v, out, logits, _ = _run(model, np.random.default_rng(1), grads=True)
  np.testing.assert_allclose(  # sigmoid masks: the detected class's channel
      out["masks"], jax.nn.sigmoid(_detected_channel(logits, out["labels"])), rtol=1e-5,
      atol=1e-6)
  p = v["params"]
  assert not any(k.startswith("layer4") for k in p["backbone"])
  # One copy of res5, owned by the box head and used by the mask head too.
  assert set(p["box_head"]) == {"trunk", "predictor"}
  assert set(p["mask_head"]) == {"head"}
  assert set(p["box_head"]["trunk"]) == {"layer4_0", "layer4_1"}
  # box predictor on the averaged res5 output (8 * 8 channels for width 8)
  assert p["box_head"]["predictor"]["cls_score"]["kernel"].shape == (64, 4)
  assert out["masks"].shape == (1, 10, 8, 8)  # res5 halves 8 -> 4, deconv -> 8
  # The mask head reads res5's output (C5: 64 channels at width 8, not C4's
  # 32), through the box head's trunk: it has no parameters of its own there.
  assert p["mask_head"]["head"]["conv5_mask"]["kernel"].shape == (2, 2, 64, 16)


def test_wrong_combinations_are_clear_errors():
  with pytest.raises(ValueError, match="num_stages=3"):
    build_model(merged(TINY, **SINGLE_LEVEL, roi_heads=dict(trunk="res5")))
  with pytest.raises(ValueError, match="class_agnostic"):
    build_model(merged(TINY, roi_heads=dict(mask=dict(loss="softmax", class_agnostic=True))))
  with pytest.raises(ValueError, match="softmax_readout='foreground' reads a softmax"):
    build_model(merged(TINY, roi_heads=dict(mask=dict(softmax_readout="foreground"))))
  for field, cfg in (("neck", dict(neck="bifpn")),
                     ("roi_heads.pooler", dict(roi_heads=dict(pooler="crop"))),
                     ("roi_heads.trunk", dict(roi_heads=dict(trunk="res6"))),
                     ("roi_heads.box.head", dict(roi_heads=dict(box=dict(head="conv")))),
                     ("roi_heads.mask.head", dict(roi_heads=dict(mask=dict(head="unet")))),
                     ("roi_heads.mask.loss", dict(roi_heads=dict(mask=dict(loss="dice")))),
                     ("roi_heads.mask.softmax_readout",
                      dict(roi_heads=dict(mask=dict(loss="softmax", softmax_readout="bg"))))):
    with pytest.raises(ValueError, match=f"config.model.{field} must be one of"):
      build_model(merged(TINY, **cfg))
