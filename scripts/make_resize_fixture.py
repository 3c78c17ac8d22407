"""(Re)creates tests/data/torchvision_resize.json: the sizes torchvision's
``GeneralizedRCNNTransform`` resizes images to, for tests/test_input_spec.py.

Needs torch + torchvision, so it runs in the torch reference environment
(torch 2.13 + torchvision 0.28, CPU, see scripts/make_torch_fixtures.py); CI
has no torch and the tests only read what this writes::

  /work/tvenv/bin/python scripts/make_resize_fixture.py

For each (min_size, max_size) of ``CONFIGS`` it builds
``GeneralizedRCNNTransform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD)``
in eval mode, runs it on a blank 3 x H x W image for every (H, W) of the grid
and records ``image_sizes[0]``: once eagerly (``eager``) and once through
``torch.jit.script`` of the same transform (``scripted``: torchvision's
TorchScript / ONNX branch, whose scale is a float32 tensor). The grid pairs
short sides from 1 to 1400 with long sides that leave the scale to min_size
(landscape and portrait) and with long sides 3x the short one, where
max_size caps the scale, plus a few COCO image sizes.
"""

import json
import os

import torch
import torchvision
from torchvision.models.detection.transform import GeneralizedRCNNTransform

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                   "tests", "data", "torchvision_resize.json")
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # mrcnn_jax.input_spec's; no import of
IMAGENET_STD = [0.229, 0.224, 0.225]  # mrcnn_jax here (torch env only)
# (min_size, max_size, short sides, more (H, W)): the COCO recipe (800 and
# 640, the ends of Detectron2's multi-scale list) with some COCO image sizes
# (334 x 500 and 539 x 640 get 799 rows), and the small sizes of the tests.
COCO_SIZES = [(480, 640), (640, 480), (427, 640), (640, 427), (333, 500),
              (334, 500), (500, 334), (375, 500), (539, 640), (612, 612)]
CONFIGS = [
    (800, 1333, range(1, 1400, 11), COCO_SIZES),
    (640, 1333, range(1, 1000, 17), COCO_SIZES[:4]),
    (128, 256, range(1, 400, 4), []),
    (64, 96, range(1, 200, 4), []),
]


def grid(shorts, more):
  """(H, W) pairs: 4:3 landscape and portrait, 3:1 (max_size binds), more."""
  sizes = []
  for s in shorts:
    long = max(s, (4 * s + 2) // 3)
    sizes += [(s, long), (long, s), (s, 3 * s)]
  return sizes + [hw for hw in more if hw not in sizes]


def main() -> None:
  torch.set_num_threads(1)
  cases = []
  for min_size, max_size, shorts, more in CONFIGS:
    transform = GeneralizedRCNNTransform(min_size, max_size, IMAGENET_MEAN,
                                         IMAGENET_STD).eval()
    scripted = torch.jit.script(transform)
    rows = []
    with torch.no_grad():
      for h, w in grid(shorts, more):
        image = torch.zeros(3, h, w)
        eager = transform([image])[0].image_sizes[0]
        script = scripted([image])[0].image_sizes[0]
        rows.append([h, w, *eager, *script])
    cases.append({"min_size": min_size, "max_size": max_size,
                  "rows": rows})
    differ = sum(r[2:4] != r[4:6] for r in rows)
    print(f"min_size {min_size} max_size {max_size}: {len(rows)} sizes, "
          f"eager and scripted differ on {differ}")
  data = {
      "generator": "scripts/make_resize_fixture.py",
      "torch": torch.__version__,
      "torchvision": torchvision.__version__,
      "rows": "[H, W, eager h, eager w, scripted h, scripted w]",
      "cases": cases,
  }
  with open(OUT, "w") as f:  # one row a line: small, and diffs stay readable
    f.write(json.dumps(data, indent=1).split('"cases"')[0] + '"cases": [\n')
    for i, case in enumerate(cases):
      f.write(f' {{"min_size": {case["min_size"]}, "max_size": {case["max_size"]}, '
              '"rows": [\n')
      f.write(",\n".join("  " + json.dumps(r, separators=(",", ":")) for r in case["rows"]))
      f.write("\n ]}" + ("," if i + 1 < len(cases) else "") + "\n")
    f.write("]}\n")
  print(f"{os.path.getsize(OUT)} bytes  tests/data/torchvision_resize.json")


if __name__ == "__main__":
  main()
