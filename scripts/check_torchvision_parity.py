"""Stage-by-stage parity of mrcnn_jax with torchvision's detection models.

``--model`` picks the family (default ``maskrcnn``):

  fasterrcnn    fasterrcnn_resnet50_fpn     experiments/faster_rcnn_r50_fpn.py
  maskrcnn      maskrcnn_resnet50_fpn       experiments/mask_rcnn_r50_fpn.py
  maskrcnn_v2   maskrcnn_resnet50_fpn_v2    experiments/mask_rcnn_r50_fpn_v2.py
  keypointrcnn  keypointrcnn_resnet50_fpn   experiments/keypoint_rcnn_r50_fpn.py

Builds ``torchvision.models.detection.<model>(weights=None,
weights_backbone=None)`` with a fixed seed, saves its state_dict to a .pth
file, converts that file with mrcnn_jax's torch-free reader, and runs both
models on the same real photographs (scikit-image's ``astronaut`` and
``coffee``), resized beforehand so that torchvision's transform is the
identity (short side 800, long side <= 1333) and padded the same way (a
shared canvas, a multiple of 32).

Random weights would make every stage trivially similar, so they are made
informative first, identically on both sides:
  * BatchNorm statistics and affine parameters are randomised (so the BN
    conversion is exercised);
  * the classifier is scaled up so that class scores are far from uniform and
    ties do not decide which detections survive; the score threshold is
    lowered on both sides so there are plenty of detections;
  * FPN outputs, RPN and box regressors, the mask logits and the keypoint
    logits are rescaled so that no stage saturates or sits on a threshold
    (see make_torch_model).

Compared, with the pass criteria of issue 2:
  FPN features P2..P6    max |diff| / max |ref| <= 1e-3 per level
  RPN proposals          >= 99% of torchvision's proposals have a partner
                         with IoU >= 0.99 (order may differ on near-ties)
  detections             one to one: same count, same labels, IoU >= 0.99,
                         |score diff| <= 1e-3
  masks                  pasted into the same (torchvision's) boxes:
                         probabilities within 1e-3; thresholded at 0.5,
                         IoU >= 0.98 each over the pixels not within 1e-4 of
                         the threshold (strict IoU and the count of such
                         pixels are printed)
  keypoints              per detection pair: every keypoint within 1 pixel
                         (x and y), its score (the heatmap logit) within 1e-3;
                         pairs whose boxes straddle an integer width or
                         height (decoded on grids of different sizes) are
                         left out and printed, at most 2 per image

Prints each difference, then ``PARITY OK`` (exit 0) or ``PARITY FAILED``
(exit 1).

Environment (outside CI; torchvision's wheels need torch's CUDA build, which
runs on CPU): a separate virtualenv, e.g.

  python3 -m venv /tmp/tvenv && mkdir -p /tmp/empty
  PIP_FIND_LINKS=/tmp/empty /tmp/tvenv/bin/pip install torch==2.13.0 torchvision==0.28.0
  /tmp/tvenv/bin/pip install jax flax optax orbax-checkpoint ml-collections scikit-image
  /tmp/tvenv/bin/pip install --no-deps -e .   # mrcnn_jax itself, without TensorFlow
  /tmp/tvenv/bin/python scripts/check_torchvision_parity.py [--model keypointrcnn]

(or, without installing mrcnn_jax there: ``PYTHONPATH=. /tmp/tvenv/bin/python
scripts/check_torchvision_parity.py``).

(``PIP_FIND_LINKS`` pointing at an empty folder stops pip from picking a
local CPU-only torch wheel that torchvision cannot use.) TensorFlow is not
needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from mrcnn_jax.input_spec import IMAGENET_MEAN, IMAGENET_STD

MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)


def load_images():
  from PIL import Image
  from skimage import data
  out = []
  for name, img in (("astronaut", data.astronaut()), ("coffee", data.coffee())):
    h, w = img.shape[:2]
    scale = 800 / min(h, w)
    nh, nw = round(h * scale), round(w * scale)
    assert max(nh, nw) <= 1333
    out.append((name, np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR),
                                 np.float32) / 255.0))
  return out


MODELS = {  # --model: (torchvision builder, experiment config)
    "fasterrcnn": ("fasterrcnn_resnet50_fpn", "faster_rcnn_r50_fpn"),
    "maskrcnn": ("maskrcnn_resnet50_fpn", "mask_rcnn_r50_fpn"),
    "maskrcnn_v2": ("maskrcnn_resnet50_fpn_v2", "mask_rcnn_r50_fpn_v2"),
    "keypointrcnn": ("keypointrcnn_resnet50_fpn", "keypoint_rcnn_r50_fpn"),
}


def make_torch_model(name: str, seed: int, score_threshold: float, cls_scale: float, images):
  import torch
  import torchvision
  torch.manual_seed(seed)
  model = getattr(torchvision.models.detection, MODELS[name][0])(
      weights=None, weights_backbone=None)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        c = mod.num_features
        mod.weight.copy_(0.5 + torch.rand(c, generator=g))
        mod.bias.copy_(0.2 * torch.randn(c, generator=g))
        mod.running_mean.copy_(0.2 * torch.randn(c, generator=g))
        mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
    model.roi_heads.box_predictor.cls_score.weight.mul_(cls_scale)
    model.roi_heads.box_predictor.cls_score.bias.normal_(0.0, 1.0, generator=g)
  model.roi_heads.score_thresh = score_threshold
  model.eval()
  # Calibrate: with random BN statistics the FPN outputs have a std in the
  # hundreds, which saturates the RPN (every box grows to the whole image and
  # NMS leaves a handful). Rescale each FPN output conv to unit std, and give
  # the RPN and box regressors deltas of a plausible size (~0.3).
  with torch.no_grad():
    image_list, _ = model.transform(images)
    feats = model.backbone(image_list.tensors)
    for i, key in enumerate(["0", "1", "2", "3"]):
      std = float(feats[key].std())
      # The block's last affine layer: the conv (v1) or its BatchNorm (v2).
      last = model.backbone.fpn.layer_blocks[i][-1]
      last.weight.div_(std)
      last.bias.div_(std)
    feats = model.backbone(image_list.tensors)
    logits, deltas = model.rpn.head(list(feats.values()))
    model.rpn.head.cls_logits.weight.div_(float(torch.cat([o.flatten() for o in logits]).std()))
    model.rpn.head.bbox_pred.weight.mul_(
        0.3 / float(torch.cat([d.flatten() for d in deltas]).std()))
    model.roi_heads.box_predictor.bbox_pred.weight.mul_(100.0)
    # Random mask heads give logits near 0, i.e. probabilities near the 0.5
    # threshold, so float rounding would decide pixels of small masks. The
    # logits are linear in the last layer, so scaling its weight and bias by
    # k scales them by k: spread them to a std of ~4.
    if model.roi_heads.has_mask():
      probs = torch.cat([o["masks"].flatten() for o in model(images)])
      logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
      k = 4.0 / float(logits.std())
      model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(k)
      model.roi_heads.mask_predictor.mask_fcn_logits.bias.mul_(k)
    if model.roi_heads.has_keypoint():
      # Keypoint scores are heatmap logits: give them a std of ~3 (the
      # logits are linear in the predictor's weight and bias).
      scores = torch.cat([o["keypoints_scores"].flatten() for o in model(images)])
      k = 3.0 / float(scores.std())
      model.roi_heads.keypoint_predictor.kps_score_lowres.weight.mul_(k)
      model.roi_heads.keypoint_predictor.kps_score_lowres.bias.mul_(k)
  return model


def rel_diff(a, b):
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def iou_matrix(a, b):
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = np.clip(rb - lt, 0, None)
  inter = wh[..., 0] * wh[..., 1]
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
  union = area(a)[:, None] + area(b)[None, :] - inter
  return inter / np.maximum(union, 1e-12)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=sorted(MODELS), default="maskrcnn")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--score-threshold", type=float, default=0.01)
  parser.add_argument("--cls-scale", type=float, default=30.0)
  args = parser.parse_args(argv)

  import jax
  import torch

  import importlib
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
  exp = importlib.import_module(MODELS[args.model][1])
  from mrcnn_jax.model import build_model, init_params
  from mrcnn_jax.ops.masks import paste_masks
  from mrcnn_jax.weights import load_torchvision_checkpoint

  failures = []

  def check(ok, msg):
    print(("  ok    " if ok else "  FAIL  ") + msg)
    if not ok:
      failures.append(msg)

  images = load_images()
  timgs = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for _, im in images]
  print(f"model: {MODELS[args.model][0]} (config experiments/{MODELS[args.model][1]}.py)")
  tmodel = make_torch_model(args.model, args.seed, args.score_threshold, args.cls_scale, timgs)
  sizes = [im.shape[:2] for _, im in images]
  canvas = tuple(int(np.ceil(max(s[i] for s in sizes) / 32) * 32) for i in (0, 1))
  print(f"images: {[(n, im.shape[:2]) for n, im in images]}, canvas {canvas}")

  # --- torchvision ---------------------------------------------------------
  with torch.no_grad():
    image_list, _ = tmodel.transform(timgs)
    assert tuple(image_list.tensors.shape[-2:]) == canvas, image_list.tensors.shape
    assert [tuple(s) for s in image_list.image_sizes] == [tuple(s) for s in sizes]
    t_feats = tmodel.backbone(image_list.tensors)
    t_props, _ = tmodel.rpn(image_list, t_feats)
    t_out = tmodel(timgs)

  # --- mrcnn_jax, from the saved .pth through the safe reader ---------------
  model = build_model(exp.get_config().model,
                      roi_heads__box__score_threshold=args.score_threshold)
  template = init_params(model, jax.random.PRNGKey(0))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "maskrcnn.pth")
    torch.save(tmodel.state_dict(), path)
    variables = load_torchvision_checkpoint(path, template)

  batch = np.zeros((len(images),) + canvas + (3,), np.float32)
  for i, (_, im) in enumerate(images):
    batch[i, :im.shape[0], :im.shape[1]] = (im - MEAN) / STD
  image_sizes = np.asarray(sizes, np.int32)

  feats_fn = jax.jit(lambda v, x: model.apply(v, x, method=model.features))
  j_feats = feats_fn(variables, batch)
  infer = jax.jit(model.apply)
  t0 = time.time()
  j_out = jax.device_get(infer(variables, batch, image_sizes))
  print(f"mrcnn_jax inference (incl. compile): {time.time() - t0:.1f}s")

  print("FPN features (max |diff| / max |torchvision|):")
  for name, jf in zip(["0", "1", "2", "3", "pool"], j_feats):
    tf_ = t_feats[name].permute(0, 2, 3, 1).numpy()
    d = rel_diff(np.asarray(jf), tf_)
    check(jf.shape == tf_.shape and d <= 1e-3, f"P{['0','1','2','3','pool'].index(name) + 2} "
          f"{tuple(jf.shape)}: {d:.2e}")

  print("RPN proposals:")
  for i, tp in enumerate(t_props):
    tp = tp.numpy()
    jp = j_out["proposals"][i][j_out["proposals_valid"][i]]
    iou = iou_matrix(tp, jp) if len(jp) and len(tp) else np.zeros((len(tp), 1))
    matched = float(np.mean(iou.max(axis=1) >= 0.99)) if len(tp) else 1.0
    check(len(jp) == len(tp) and matched >= 0.99,
          f"image {i}: torchvision {len(tp)}, ours {len(jp)}, matched at IoU>=0.99: "
          f"{100 * matched:.2f}%")

  print("Detections and masks:")
  for i, (to, (name, im)) in enumerate(zip(t_out, images)):
    tb, ts, tl = to["boxes"].numpy(), to["scores"].numpy(), to["labels"].numpy()
    v = j_out["valid"][i]
    jb, js, jl = j_out["boxes"][i][v], j_out["scores"][i][v], j_out["labels"][i][v]
    check(int(j_out["num_candidates"][i]) <= model.box_head.candidates or v.sum() == 100,
          f"image {i}: candidate cap exact ({int(j_out['num_candidates'][i])} candidates)")
    check(len(jb) == len(tb), f"image {i} ({name}): {len(tb)} torchvision detections, "
          f"{len(jb)} ours")
    if len(tb) == 0 or len(jb) != len(tb):
      continue
    # one-to-one: best-IoU partner with the same label
    iou = iou_matrix(tb, jb) * (tl[:, None] == jl[None, :])
    partner = iou.argmax(axis=1)
    best = iou.max(axis=1)
    one_to_one = len(set(partner.tolist())) == len(partner)
    sdiff = np.abs(ts - js[partner])
    check(one_to_one and best.min() >= 0.99 and sdiff.max() <= 1e-3,
          f"image {i}: one-to-one {one_to_one}, labels equal {bool((tl == jl[partner]).all())}, "
          f"min IoU {best.min():.5f}, max |score diff| {sdiff.max():.2e}")
    if "keypoints" in to:
      tk, tks = to["keypoints"].numpy(), to["keypoints_scores"].numpy()
      jk = j_out["keypoints"][i][v][partner]
      jks = j_out["keypoint_scores"][i][v][partner]
      # Both decode a heatmap onto ceil(box width) x ceil(box height)
      # pixels, so a pair of boxes on either side of an integer size (a
      # width of 15.99969 against 16.00003) is decoded on different grids,
      # and its keypoints legitimately differ: such pairs are counted and
      # left out of the comparison (at most 2 per image pass).
      jbp = jb[partner]
      grid_t = np.ceil(np.maximum(tb[:, 2:] - tb[:, :2], 1.0))
      grid_j = np.ceil(np.maximum(jbp[:, 2:] - jbp[:, :2], 1.0))
      same = (grid_t == grid_j).all(axis=1)
      kdiff = np.abs(jk[same][..., :2] - tk[same][..., :2])
      ksdiff = np.abs(jks[same] - tks[same])
      # (initial=0: where every pair straddles, nothing is left to compare)
      kmax, ksmax = kdiff.max(initial=0.0), ksdiff.max(initial=0.0)
      exact = bool(j_out["keypoints_exact"][i][v].all())
      far = int((kdiff.max(axis=-1) > 0.5).sum())
      straddle = int((~same).sum())
      check(kmax <= 1.0 and ksmax <= 1e-3 and exact and straddle <= 2,
            f"image {i}: keypoints of {int(same.sum())} detections x {tk.shape[1]}: max |xy "
            f"diff| {kmax:.3f} px ({far} keypoints off by > 0.5 px), max |score diff| "
            f"{ksmax:.2e}, decoding certificate held: {exact}; {straddle} detection(s) "
            "left out whose boxes straddle an integer size")
      for d in np.flatnonzero(~same):
        print(f"        straddling: torchvision box {tb[d].tolist()}, ours {jbp[d].tolist()}")
    if "masks" not in to:
      continue
    tm = to["masks"].numpy()[:, 0] > 0.5
    # Pasting truncates the (expanded) box to integers, so a box that differs
    # by 1e-3 px can land one pixel over and shift a small mask by a pixel.
    # The boxes are compared above; the masks are compared pasted into the
    # same boxes (torchvision's). A pixel whose probability sits within 1e-4
    # of the 0.5 threshold is decided by float rounding (~1e-7 relative in
    # RoIAlign), which on a mask of 20 pixels moves IoU by 0.05; such pixels
    # are counted and left out of the IoU, and the probabilities themselves
    # must agree to 1e-3 everywhere.
    tp = to["masks"].numpy()[:, 0]
    jp = np.asarray(paste_masks(j_out["masks"][i][v][partner], tb, im.shape[:2]))
    jp_own = np.asarray(paste_masks(j_out["masks"][i][v][partner], jb[partner], im.shape[:2]))

    def iou(a, b, keep):
      inter = (a & b & keep).sum(axis=(1, 2))
      union = ((a | b) & keep).sum(axis=(1, 2))
      return np.where(union > 0, inter / np.maximum(union, 1), 1.0)

    everywhere = np.ones_like(tm)
    clear = np.abs(tp - 0.5) > 1e-4
    strict = iou(jp > 0.5, tm, everywhere)
    miou = iou(jp > 0.5, tm, clear)
    own = iou(jp_own > 0.5, tm, everywhere)
    pdiff = float(np.abs(jp - tp).max())
    w = int(strict.argmin())
    print(f"        masks: strict IoU min {strict.min():.4f} (detection {w}: box "
          f"{np.round(tb[w], 2).tolist()}, {int(tm[w].sum())} px, "
          f"{int((~clear[w]).sum())} px within 1e-4 of 0.5); with our own boxes min "
          f"{own.min():.4f}; {int((~clear).sum())} ambiguous px in all")
    check(miou.min() >= 0.98 and pdiff <= 1e-3,
          f"image {i}: mask IoU min {miou.min():.4f}, mean {miou.mean():.4f} over "
          f"{len(miou)} masks; max |prob diff| {pdiff:.1e}")

  print("PARITY OK" if not failures else "PARITY FAILED")
  return 0 if not failures else 1


if __name__ == "__main__":
  sys.exit(main())
