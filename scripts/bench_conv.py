"""Times one convolution, forward and kernel gradient, as XLA runs it
(``lax.conv_general_dilated``) and as ``mrcnn_jax.ops.conv.conv2d`` runs it,
for a list of output channel counts; one JSON line per count. No TensorFlow.

  python scripts/bench_conv.py                          # the RGB stem, 4 x 256 x 256
  python scripts/bench_conv.py --shape 1x800x1088x3 --out-channels 32,64
  python scripts/bench_conv.py --shape 8x64x64x64 --kernel 3 --stride 1 --out-channels 64

What it measured is in README.md (Speed: "RGB input padded to four channels").
"""

from __future__ import annotations

import argparse
import os
import sys

_SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_SCRIPTS, os.path.dirname(_SCRIPTS)]  # bench_common, mrcnn_jax

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from bench_common import jax_device_description, median_seconds, print_json_line  # noqa: E402
from mrcnn_jax.ops import conv as conv_ops  # noqa: E402


def median_ms(fn, runs: int) -> float:
  """Median milliseconds of ``fn`` after one call that compiles it."""
  med, _ = median_seconds(lambda: jax.block_until_ready(fn()), runs)
  return round(med * 1e3, 2)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shape", default="4x256x256x3", help="input NxHxWxC")
  p.add_argument("--kernel", type=int, default=7)
  p.add_argument("--stride", type=int, default=2)
  p.add_argument("--out-channels", default="8,16,24,32,48,64,128")
  p.add_argument("--runs", type=int, default=7)
  p.add_argument("--backward", action="store_true", help="also time the kernel gradient")
  args = p.parse_args(argv)
  n, h, w, c = (int(v) for v in args.shape.split("x"))
  k, s = args.kernel, args.stride
  pad = ((k // 2, k // 2),) * 2
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((n, h, w, c), np.float32))
  for d in (int(v) for v in args.out_channels.split(",")):
    kern = jnp.asarray(rng.normal(size=(k, k, c, d)).astype(np.float32) * 0.1)
    forms = {
        "xla": lambda x, kern: lax.conv_general_dilated(
            x, kern, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")),
        "mrcnn_jax": lambda x, kern: conv_ops.conv2d(x, kern, stride=s, padding=pad),
    }
    row = {"input": args.shape, "kernel": k, "stride": s, "out_channels": d,
           "device": jax_device_description()}
    outs = {}
    for name, f in forms.items():
      fwd = jax.jit(f)
      outs[name] = fwd(x, kern)
      row[f"{name}_forward_ms"] = median_ms(lambda: fwd(x, kern), args.runs)
      if args.backward:
        dk = jax.jit(jax.grad(lambda kern, x, f=f: f(x, kern).sum()))
        row[f"{name}_kernel_grad_ms"] = median_ms(lambda: dk(kern, x), args.runs)
    row["max_abs_diff"] = float(jnp.abs(outs["xla"] - outs["mrcnn_jax"]).max())
    print_json_line(row)


if __name__ == "__main__":
  main()
