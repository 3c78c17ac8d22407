"""Writes tests/data/tiny_maskrcnn.pth: a torchvision-layout Mask R-CNN
state_dict (torch.save, zip format) for the tiny test model of
tests/helpers.py, with random values, so CI can test `mrcnn-jax convert`
end to end without torch. Key names and layouts follow torchvision
(``backbone.body.layer1.0.conv1.weight`` [out, in, kh, kw], fc6 in (C, h, w)
order, ConvTranspose [in, out, kh, kw]).

  /tmp/tvenv/bin/python scripts/make_tiny_checkpoint.py   # needs torch
"""

import os
import sys

import jax
import numpy as np
import torch
from flax import traverse_util

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))

from helpers import tiny_config  # noqa: E402
from test_weights import to_torch_layout  # noqa: E402

from mrcnn_jax.model import build_model, init_params  # noqa: E402
from mrcnn_jax.weights import torchvision_key  # noqa: E402


def main():
  model = build_model(tiny_config().model)
  variables = init_params(model, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  sd = {}
  for path, x in traverse_util.flatten_dict(variables["params"]).items():
    val = rng.standard_normal(x.shape).astype(np.float32) * 0.1
    if path[-1] == "var":
      val = np.abs(val) + 0.5
    sd[torchvision_key(path)] = torch.from_numpy(
        np.ascontiguousarray(to_torch_layout(path, val)))
  out = os.path.join(ROOT, "tests", "data", "tiny_maskrcnn.pth")
  torch.save(sd, out)
  print(f"wrote {out}: {len(sd)} tensors, {os.path.getsize(out) / 1024:.0f} KiB")


if __name__ == "__main__":
  main()
