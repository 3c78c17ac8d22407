"""ops.conv.conv2d: values and gradients equal lax.conv_general_dilated's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax.model.layers import Conv
from mrcnn_jax.ops import conv as conv_ops
from helpers import load_script


def reference(x, k, stride, pad, groups=1):
  return jax.lax.conv_general_dilated(x, k, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=groups)


CASES = [  # (n, h, w, c, d, k, stride, groups)
    (2, 9, 7, 5, 6, 1, 1, 1),
    (2, 9, 7, 5, 6, 1, 2, 1),
    (3, 8, 10, 4, 3, 3, 1, 1),
    (2, 9, 11, 4, 5, 3, 2, 1),
    (1, 13, 12, 3, 4, 7, 2, 1),
    (2, 13, 12, 3, 32, 7, 2, 1),  # an RGB stem: padded to 4 channels on the CPU
    (2, 8, 8, 6, 4, 3, 1, 2),
]


@pytest.mark.parametrize("mode", ["auto", "xla", "shifted", "tiled"])
@pytest.mark.parametrize("n,h,w,c,d,k,stride,groups", CASES)
def test_values_and_gradients_match_lax(mode, n, h, w, c, d, k, stride, groups):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
  kern = jnp.asarray(rng.normal(size=(k, k, c // groups, d)), jnp.float32)
  pad = k // 2
  ours = lambda x, kern: conv_ops.conv2d(x, kern, stride=stride, padding=((pad, pad),) * 2,
                                         groups=groups, kernel_grad=mode)
  ref = lambda x, kern: reference(x, kern, stride, pad, groups)
  np.testing.assert_allclose(ours(x, kern), ref(x, kern), rtol=1e-5, atol=1e-4)
  dy = jnp.asarray(rng.normal(size=ref(x, kern).shape), jnp.float32)
  g_ours = jax.vjp(ours, x, kern)[1](dy)
  g_ref = jax.vjp(ref, x, kern)[1](dy)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["shifted", "tiled"])
def test_kernel_gradient_forms_under_jit_and_bf16(mode):
  # 40 x 40 outputs: two tiles per image for the tiled form, whose tiles are
  # summed in float32.
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 40, 40, 8)), jnp.bfloat16)
  kern = jnp.asarray(rng.normal(size=(3, 3, 8, 4)), jnp.bfloat16)
  f = jax.jit(jax.grad(lambda k: conv_ops.conv2d(x, k, padding=((1, 1), (1, 1)),
                                                 kernel_grad=mode).astype(jnp.float32).sum()))
  g = f(kern)
  assert g.dtype == jnp.bfloat16
  ref = jax.grad(lambda k: reference(x.astype(jnp.float32), k, 1, 1).sum())(
      kern.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(g, np.float32), ref, rtol=3e-2, atol=3e-1)


def test_auto_uses_matrix_products_only_for_large_outputs_on_cpu(monkeypatch):
  calls = []
  monkeypatch.setattr(conv_ops, "_conv_shifted_grad",
                      lambda *a: calls.append(a[0].shape) or conv_ops._xla_conv(*a, 1))
  small = jnp.zeros((1, 8, 8, 256))
  narrow = jnp.zeros((1, 256, 128, 2))
  big = jnp.zeros((1, 256, 128, 256))  # 32768 output pixels, 256 channels
  for x in (small, narrow, big):
    conv_ops.conv2d(x, jnp.zeros((3, 3, x.shape[-1], 2)), padding=((1, 1), (1, 1)))
  assert calls == ([big.shape] if jax.default_backend() == "cpu" else [])


@pytest.mark.parametrize("n,h,w,c,d,k,stride", [
    (2, 11, 9, 3, 4, 3, 1),  # tiles of 4 x 4 with ragged right and bottom edges
    (3, 13, 10, 2, 5, 3, 2),  # strided: each tile reads its own input window
    (1, 15, 14, 3, 2, 7, 2),  # a 7 x 7 stem-like kernel
    (7, 2, 2, 4, 3, 3, 1),  # RoI-like: whole images grouped, 4 a tile
])
@pytest.mark.parametrize("mode", ["auto", "tiled"])
def test_tiled_kernel_gradient_over_many_tiles_matches_lax(monkeypatch, mode, n, h, w, c, d, k,
                                                           stride):
  monkeypatch.setattr(conv_ops, "TILE", 4)
  monkeypatch.setattr(conv_ops, "TILE_PIXELS", 16)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
  kern = jnp.asarray(rng.normal(size=(k, k, c, d)), jnp.float32)
  pad = k // 2
  calls = []
  tiled = conv_ops._conv_tiled_grad
  monkeypatch.setattr(conv_ops, "_conv_tiled_grad", lambda *a: calls.append(1) or tiled(*a))
  ours = jax.jit(lambda x, kern: conv_ops.conv2d(x, kern, stride=stride,
                                                 padding=((pad, pad),) * 2, kernel_grad=mode))
  ref = lambda x, kern: reference(x, kern, stride, pad)
  y = ref(x, kern)
  ho, wo = y.shape[1:3]
  assert len(conv_ops.output_tiles(n, ho, wo)) > 1
  dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  g_ours = jax.vjp(ours, x, kern)[1](dy)
  g_ref = jax.vjp(ref, x, kern)[1](dy)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  used = mode == "tiled" or jax.default_backend() == "cpu"
  assert bool(calls) == used


def test_output_tiles_cover_every_output_pixel_once():
  for n, ho, wo, tile, pixels in [(2, 70, 45, 32, 1024), (5, 14, 14, 32, 1024),
                                  (3, 7, 9, 4, 16), (1, 1, 1, 32, 1024), (4, 32, 32, 32, 1024)]:
    count = np.zeros((n, ho, wo), int)
    tiles = conv_ops.output_tiles(n, ho, wo, tile, pixels)
    for imgs, rows, cols in tiles:
      count[imgs, rows, cols] += 1
      size = (imgs.stop - imgs.start) * (rows.stop - rows.start) * (cols.stop - cols.start)
      assert size <= max(pixels, tile * tile)
    assert (count == 1).all()
  assert len(conv_ops.output_tiles(4, 32, 32, 32, 1024)) == 4  # one image a tile
  assert len(conv_ops.output_tiles(32, 14, 14, 32, 1024)) == 7  # 5 RoIs a tile


def test_rgb_input_is_padded_to_four_channels_only_where_measured_faster(monkeypatch):
  seen = []
  monkeypatch.setattr(conv_ops, "_xla_conv",
                      lambda x, k, *a: seen.append((x.shape[-1], k.shape[2])) or x)
  for d in (16, 24, 32, 63, 64):
    conv_ops.conv2d(jnp.zeros((1, 8, 8, 3)), jnp.zeros((7, 7, 3, d)), stride=2,
                    padding=((3, 3), (3, 3)))
  conv_ops.conv2d(jnp.zeros((1, 8, 8, 3)), jnp.zeros((7, 7, 3, 32)), kernel_grad="xla")
  padded = (4, 4) if jax.default_backend() == "cpu" else (3, 3)
  assert seen == [(3, 3), padded, padded, padded, (3, 3), (3, 3)]


@pytest.mark.parametrize("k,pads", [(3, (1, 1, 1, 1)), (5, (2, 1, 0, 2)), (1, (0, 0, 0, 0))])
def test_loop_safe_gradients_in_a_while_loop_match_lax(k, pads):
  """Under ``loop_body()`` (as ``layers.apply_to_prefix`` traces its loops),
  stride-1 convolutions take their loop-safe gradient form inside a
  ``lax.while_loop``; values and both gradients equal lax's, asymmetric
  padding included."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(4, 7, 9, 3)), jnp.float32)
  kern = jnp.asarray(rng.normal(size=(k, k, 3, 5)), jnp.float32)
  padding = ((pads[0], pads[1]), (pads[2], pads[3]))
  ho, wo = 7 + pads[0] + pads[1] - k + 1, 9 + pads[2] + pads[3] - k + 1
  dy = jnp.asarray(rng.normal(size=(2, 2, ho, wo, 5)), jnp.float32)

  def looped(conv):  # the gradients of two images at a time, summed over 2 rounds
    def body(carry):
      i, dx, dk = carry
      xc = jax.lax.dynamic_slice_in_dim(x, 2 * i, 2)
      with conv_ops.loop_body():
        gx, gk = jax.vjp(conv, xc, kern)[1](dy[i])
      return i + 1, jax.lax.dynamic_update_slice_in_dim(dx, gx, 2 * i, 0), dk + gk
    return jax.jit(lambda: jax.lax.while_loop(
        lambda c: c[0] < 2, body, (0, jnp.zeros_like(x), jnp.zeros_like(kern)))[1:])()

  ours = looped(lambda x, kern: conv_ops.conv2d(x, kern, padding=padding))
  ref = looped(lambda x, kern: jax.lax.conv_general_dilated(
      x, kern, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")))
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bad_mode_is_an_error():
  with pytest.raises(ValueError, match="kernel_grad"):
    conv_ops.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 1, 1, 1)), kernel_grad="fast")


@pytest.mark.parametrize("k,stride,groups,bias", [(3, 1, 1, True), (1, 2, 1, False),
                                                  (3, 2, 2, False)])
def test_conv_module_equals_flax_conv(k, stride, groups, bias):
  """Same parameter names, shapes and initial values as flax's Conv, same
  outputs: checkpoints and converted weights do not depend on the class."""
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 10, 12, 4)), jnp.float32)
  ours = Conv(6, k, stride, groups=groups, use_bias=bias)
  theirs = nn.Conv(6, (k, k), strides=(stride, stride), padding=((k // 2, k // 2),) * 2,
                   feature_group_count=groups, use_bias=bias)
  v1 = ours.init(jax.random.PRNGKey(0), x)
  v2 = theirs.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, v1) == jax.tree.map(jnp.shape, v2)
  np.testing.assert_array_equal(v1["params"]["kernel"], v2["params"]["kernel"])
  np.testing.assert_allclose(ours.apply(v1, x), theirs.apply(v1, x), rtol=1e-5, atol=1e-5)


def test_bench_conv_script_times_both_forms_with_equal_values(capsys):
  import json
  bench = load_script("bench_conv")
  bench.main(["--shape", "1x16x16x3", "--out-channels", "16,32", "--runs", "1", "--backward"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["out_channels"] for r in rows] == [16, 32]
  for r in rows:
    assert r["max_abs_diff"] < 1e-5
    assert r["xla_forward_ms"] > 0 and r["mrcnn_jax_kernel_grad_ms"] > 0
