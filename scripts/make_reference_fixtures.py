"""Writes tests/data/torchvision_reference.npz: torchvision's own outputs for
the ops that mrcnn_jax reimplements, so CI (which has no torch) can check
them against something we did not write.

Run in the torchvision reference environment (see
scripts/check_torchvision_parity.py for how to make it):

  /tmp/tvenv/bin/python scripts/make_reference_fixtures.py            # everything
  /tmp/tvenv/bin/python scripts/make_reference_fixtures.py --roi-pool  # one file

tests/data/torchvision_roi_pool.npz (``write_roi_pool_fixture``):
  roi_pool/*       torchvision.ops.roi_pool outputs and feature gradients on
                   random maps (and one with many ties) for boxes inside,
                   partly and wholly outside the map, zero-sized and thin,
                   at spatial scales 1, 0.5 and 0.25

Contents (all float32 / int64, NCHW tensors already transposed to NHWC):
  roi_align/*      random feature maps and boxes (including boxes partly or
                   wholly outside the map and zero-width boxes), outputs and
                   feature gradients for aligned in {False, True},
                   sampling_ratio 1..4, spatial_scale 1 and 0.5
  msroi/*          MultiScaleRoIAlign on a 4-level pyramid
  nms/*, bnms/*    torchvision.ops.nms / batched_nms keep lists
  paste/*          torchvision's paste_masks_in_image
  anchors/*        AnchorGenerator on an 800x1216 canvas
  coder/*          BoxCoder((10, 10, 5, 5)) encode / decode

and tests/data/torchvision_keypoints.npz (``--keypoints``, only that file):
  targets/*        keypoints_to_heatmap on RoIs of several sizes (keypoints
                   inside, outside, on the right/bottom edge, unlabelled)
  loss/*           keypointrcnn_loss over two images' positive RoIs
  decode/*         heatmaps_to_keypoints (bicubic resize per RoI, argmax) on
                   smooth random and peaked maps, RoIs of 3 to 700 px
  predictor/*      KeypointRCNNPredictor (4x4 stride-2 deconv, bilinear 2x)
and tests/data/torchvision_state_dict_keys.json: every state_dict key and
shape of fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn (and _v2) and
keypointrcnn_resnet50_fpn (the layouts weights.py converts).
"""

import argparse
import os

import numpy as np
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign, batched_nms, nms, roi_align, roi_pool

DATA = os.path.join(os.path.dirname(__file__), "..", "tests", "data")
OUT = os.path.join(DATA, "torchvision_reference.npz")


def random_boxes(rng, n, h, w, scale):
  x1 = rng.uniform(-0.2 * w, w, n)
  y1 = rng.uniform(-0.2 * h, h, n)
  bw = rng.uniform(0.0, 0.8 * w, n)
  bh = rng.uniform(0.0, 0.8 * h, n)
  boxes = np.stack([x1, y1, x1 + bw, y1 + bh], 1) / scale
  boxes[0] = [2.0, 3.0, 2.0, 7.0]  # zero width
  boxes[1] = [-30.0, -30.0, -10.0, -5.0]  # wholly outside
  boxes[2] = [0.5 * w / scale, 0.5 * h / scale, 3 * w / scale, 3 * h / scale]  # partly out
  return boxes.astype(np.float32)


def main():
  rng = np.random.default_rng(0)
  out = {}
  # --- RoIAlign ---------------------------------------------------------------
  h, w, c = 11, 13, 3
  feats = rng.standard_normal((h, w, c)).astype(np.float32)
  out["roi_align/features"] = feats
  for scale in (1.0, 0.5):
    boxes = random_boxes(rng, 12, h, w, scale)
    out[f"roi_align/boxes_s{scale}"] = boxes
    for aligned in (False, True):
      for sr in (1, 2, 3, 4):
        f = torch.from_numpy(feats).permute(2, 0, 1)[None].clone().requires_grad_(True)
        rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], 1)
        y = roi_align(f, rois, (5, 4), spatial_scale=scale, sampling_ratio=sr, aligned=aligned)
        cot = torch.from_numpy(rng.standard_normal(tuple(y.shape)).astype(np.float32))
        (y * cot).sum().backward()
        key = f"roi_align/s{scale}_a{int(aligned)}_r{sr}"
        out[key + "_out"] = y.detach().permute(0, 2, 3, 1).numpy()
        out[key + "_cot"] = cot.permute(0, 2, 3, 1).numpy()
        out[key + "_grad"] = f.grad[0].permute(1, 2, 0).numpy()

  # --- MultiScaleRoIAlign -----------------------------------------------------
  canvas = (256, 320)
  levels = {}
  for i, s in enumerate((4, 8, 16, 32)):
    levels[str(i)] = torch.from_numpy(
        rng.standard_normal((2, 8, canvas[0] // s, canvas[1] // s)).astype(np.float32))
  msboxes = []
  for _ in range(2):
    x1 = rng.uniform(0, canvas[1] - 10, 30)
    y1 = rng.uniform(0, canvas[0] - 10, 30)
    side = np.exp(rng.uniform(np.log(4), np.log(400), 30))
    msboxes.append(np.stack([x1, y1, x1 + side * rng.uniform(0.5, 1.5, 30),
                             y1 + side * rng.uniform(0.5, 1.5, 30)], 1).astype(np.float32))
  pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
  y = pool(levels, [torch.from_numpy(b) for b in msboxes], [canvas, (240, 300)])
  for k, v in levels.items():
    out[f"msroi/level{k}"] = v.permute(0, 2, 3, 1).numpy()
  out["msroi/boxes"] = np.stack(msboxes)
  out["msroi/out"] = y.reshape(2, 30, 8, 7, 7).permute(0, 1, 3, 4, 2).numpy()

  # --- NMS ----------------------------------------------------------------------
  n = 300
  ctr = rng.uniform(0, 200, (n, 2))
  wh = rng.uniform(5, 60, (n, 2))
  nboxes = np.concatenate([ctr - wh / 2, ctr + wh / 2], 1).astype(np.float32)
  nscores = rng.uniform(0, 1, n).astype(np.float32)
  ncls = rng.integers(0, 5, n)
  out["nms/boxes"], out["nms/scores"], out["nms/classes"] = nboxes, nscores, ncls
  for thr in (0.3, 0.5, 0.7):
    out[f"nms/keep_{thr}"] = nms(torch.from_numpy(nboxes), torch.from_numpy(nscores), thr).numpy()
    out[f"bnms/keep_{thr}"] = batched_nms(torch.from_numpy(nboxes), torch.from_numpy(nscores),
                                          torch.from_numpy(ncls), thr).numpy()

  # --- paste masks ------------------------------------------------------------
  pm = rng.uniform(0, 1, (10, 1, 28, 28)).astype(np.float32)
  # Detections are clipped to the image before pasting (torchvision's paste
  # itself fails on boxes far outside it), so clip here too.
  pb = random_boxes(rng, 10, 60, 80, 1.0)
  pb[:, 0::2] = np.clip(pb[:, 0::2], 0, 80)
  pb[:, 1::2] = np.clip(pb[:, 1::2], 0, 60)
  pb[3] = [10.3, 12.7, 10.9, 40.2]  # thin
  pb[4] = [0.0, 0.0, 80.0, 60.0]  # whole image
  out["paste/masks"], out["paste/boxes"] = pm[:, 0], pb
  out["paste/out"] = paste_masks_in_image(torch.from_numpy(pm), torch.from_numpy(pb),
                                          (60, 80)).numpy()[:, 0]

  # --- anchors ---------------------------------------------------------------
  gen = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
  acanvas = (800, 1216)
  grids = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
  il = ImageList(torch.zeros(1, 3, *acanvas), [acanvas])
  fmaps = [torch.zeros(1, 1, *g) for g in grids]
  anchors = gen(il, fmaps)[0].numpy()
  out["anchors/all"] = anchors

  # --- box coder -------------------------------------------------------------
  coder = det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0))
  ref = nboxes[:50]
  tgt = nboxes[50:100]
  out["coder/ref"], out["coder/tgt"] = ref, tgt
  out["coder/enc"] = coder.encode_single(torch.from_numpy(tgt), torch.from_numpy(ref)).numpy()
  deltas = rng.standard_normal((50, 4)).astype(np.float32) * 3
  deltas[0, 2:] = 50.0  # exercises the exp clip
  out["coder/deltas"] = deltas
  out["coder/dec"] = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(ref)).numpy()

  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT}: {len(out)} arrays, {os.path.getsize(OUT) / 1024:.0f} KiB "
        f"(torch {torch.__version__}, torchvision {torchvision.__version__})")


def write_roi_pool_fixture():
  """tests/data/torchvision_roi_pool.npz: torchvision's RoIPool values and
  gradients (its own file, so it can be remade without touching the rest)."""
  rng = np.random.default_rng(1)
  out = {}
  h, w, c = 11, 13, 3
  maps = {"rand": rng.standard_normal((h, w, c)).astype(np.float32),
          # Small integers: many equal maxima, so the tie rule (first pixel in
          # row-major order takes the gradient) is exercised.
          "ties": rng.integers(-2, 3, (h, w, c)).astype(np.float32)}
  for name, feats in maps.items():
    out[f"roi_pool/features_{name}"] = feats
    for scale in (1.0, 0.5, 0.25):
      boxes = random_boxes(rng, 16, h, w, scale)
      boxes[3] = np.array([1.2, 0.3, 1.4, 9.7]) / scale  # one pixel wide
      boxes[4] = np.array([-5.0, -5.0, 2 * w, 2 * h]) / scale  # larger than the map
      boxes[5] = np.array([2.5, 3.5, 6.5, 7.49]) / scale  # halves round away from zero
      out[f"roi_pool/boxes_{name}_s{scale}"] = boxes
      for size in ((5, 4), (7, 7), (2, 3)):
        f = torch.from_numpy(feats).permute(2, 0, 1)[None].clone().requires_grad_(True)
        rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], 1)
        y = roi_pool(f, rois, size, spatial_scale=scale)
        cot = torch.from_numpy(rng.standard_normal(tuple(y.shape)).astype(np.float32))
        (y * cot).sum().backward()
        key = f"roi_pool/{name}_s{scale}_{size[0]}x{size[1]}"
        out[key + "_out"] = y.detach().permute(0, 2, 3, 1).numpy()
        out[key + "_cot"] = cot.permute(0, 2, 3, 1).numpy()
        out[key + "_grad"] = f.grad[0].permute(1, 2, 0).numpy()
  path = os.path.join(DATA, "torchvision_roi_pool.npz")
  np.savez_compressed(path, **out)
  print(f"wrote {path}: {len(out)} arrays, {os.path.getsize(path) / 1024:.0f} KiB "
        f"(torch {torch.__version__}, torchvision {torchvision.__version__})")


def keypoint_fixtures():
  """tests/data/torchvision_keypoints.npz (see the module docstring)."""
  from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
  from torchvision.models.detection.roi_heads import (heatmaps_to_keypoints,
                                                      keypointrcnn_loss,
                                                      keypoints_to_heatmap)
  rng = np.random.default_rng(13)
  torch.manual_seed(13)
  out = {}
  s, k = 56, 4
  # Large inputs are stored as float16 (exactly: they are rounded first).
  f16 = lambda a: a.astype(np.float16).astype(np.float32)

  def rois_and_keypoints(n, g=None):
    x1, y1 = rng.uniform(0, 300, n), rng.uniform(0, 300, n)
    w, h = rng.uniform(3, 250, n), rng.uniform(3, 250, n)
    rois = np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)
    g = n if g is None else g
    kp = np.zeros((g, k, 3), np.float32)
    src = rois if g == n else rois[rng.integers(0, n, g)]
    for i in range(g):
      bw, bh = src[i, 2] - src[i, 0], src[i, 3] - src[i, 1]
      kp[i, :, 0] = src[i, 0] + rng.uniform(-0.2, 1.2, k) * bw
      kp[i, :, 1] = src[i, 1] + rng.uniform(-0.2, 1.2, k) * bh
      kp[i, :, 2] = rng.choice([0, 1, 2], k, p=[0.2, 0.3, 0.5])
    return rois, kp

  rois, kp = rois_and_keypoints(40)
  kp[0, 0, :2] = rois[0, 2:]  # exactly on the right and bottom edges
  kp[1, 1, 0] = rois[1, 2]
  kp[2, 2, :2] = rois[2, :2]  # on the top-left corner
  heat, valid = keypoints_to_heatmap(torch.from_numpy(kp), torch.from_numpy(rois), s)
  out["targets/rois"], out["targets/keypoints"] = rois, kp
  out["targets/heatmaps"], out["targets/valid"] = heat.numpy(), valid.numpy()

  props, gts, midx, logits = [], [], [], []
  for n, g in ((7, 3), (5, 2)):
    r, kpg = rois_and_keypoints(n, g)
    props.append(torch.from_numpy(r))
    gts.append(torch.from_numpy(kpg))
    midx.append(torch.from_numpy(rng.integers(0, g, n)))
  logit = torch.from_numpy(f16(rng.standard_normal((12, k, s, s)) * 3))
  out["loss/value"] = keypointrcnn_loss(logit, props, gts, midx).numpy()
  out["loss/logits"] = logit.permute(0, 2, 3, 1).numpy().astype(np.float16)
  for i in range(2):
    out[f"loss/rois{i}"], out[f"loss/gt{i}"] = props[i].numpy(), gts[i].numpy()
    out[f"loss/matched{i}"] = midx[i].numpy()

  # Smooth random maps (random fields blurred by a 9x9 box filter) and maps
  # with a sharp peak, on RoIs from 3 px (down-sampling) to 700 px.
  d = 10
  noise = torch.from_numpy(rng.standard_normal((d, k, s + 8, s + 8)).astype(np.float32))
  smooth = torch.nn.functional.avg_pool2d(noise, 9, 1) * 9.0
  peak = torch.from_numpy(rng.standard_normal((d, k, s, s)).astype(np.float32))
  py, px = rng.integers(0, s, (2, d, k))
  for i in range(d):
    for j in range(k):
      peak[i, j, py[i, j], px[i, j]] += 12.0
  maps = torch.from_numpy(f16(torch.cat([smooth, peak]).numpy()))
  sizes = np.concatenate([rng.uniform(3, 60, d), rng.uniform(60, 700, d)])
  rng.shuffle(sizes)
  x1, y1 = rng.uniform(0, 500, 2 * d), rng.uniform(0, 500, 2 * d)
  aspect = rng.uniform(0.5, 2.0, 2 * d)
  boxes = np.stack([x1, y1, x1 + sizes, y1 + sizes * aspect], 1).astype(np.float32)
  boxes[0] = [10.0, 20.0, 10.5, 20.25]  # under one pixel: clamped to 1
  xy, scores = heatmaps_to_keypoints(maps, torch.from_numpy(boxes))
  out["decode/maps"] = maps.permute(0, 2, 3, 1).numpy().astype(np.float16)
  out["decode/boxes"] = boxes
  out["decode/keypoints"], out["decode/scores"] = xy.numpy(), scores.numpy()

  pred = KeypointRCNNPredictor(8, k)
  with torch.no_grad():
    pred.kps_score_lowres.bias.normal_()
    x = torch.from_numpy(rng.standard_normal((3, 8, 14, 14)).astype(np.float32))
    y = pred(x)
  out["predictor/x"] = x.permute(0, 2, 3, 1).numpy()
  out["predictor/weight"] = pred.kps_score_lowres.weight.detach().numpy()
  out["predictor/bias"] = pred.kps_score_lowres.bias.detach().numpy()
  out["predictor/y"] = y.permute(0, 2, 3, 1).numpy()

  path = os.path.join(os.path.dirname(OUT), "torchvision_keypoints.npz")
  np.savez_compressed(path, **out)
  print(f"wrote {path}: {len(out)} arrays, {os.path.getsize(path) / 1024:.0f} KiB")

  import json
  keys = {}
  for name in ("fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
               "keypointrcnn_resnet50_fpn"):
    model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None)
    keys[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
  path = os.path.join(os.path.dirname(OUT), "torchvision_state_dict_keys.json")
  with open(path, "w") as f:
    json.dump(keys, f, indent=0)
  print(f"wrote {path}: {sum(len(v) for v in keys.values())} keys")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--keypoints", action="store_true",
                      help="write only tests/data/torchvision_keypoints.npz")
  parser.add_argument("--roi-pool", action="store_true",
                      help="write only tests/data/torchvision_roi_pool.npz")
  args = parser.parse_args()
  if args.keypoints:
    keypoint_fixtures()
  if args.roi_pool:
    write_roi_pool_fixture()
  if not (args.keypoints or args.roi_pool):
    main()
    write_roi_pool_fixture()
