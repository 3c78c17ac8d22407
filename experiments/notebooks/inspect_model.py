# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Inspect the model, stage by stage
#
# One image through Mask R-CNN, each stage drawn: the FPN's feature maps,
# the anchors of each level, the RPN's objectness, the proposals before and
# after NMS, RoIAlign's crops next to the image regions they come from (and
# RoIPool's, to see the misalignment RoIAlign fixes), the box head's
# detections, the 28 x 28 masks and the masks pasted into the image.
#
# Every stage is a method of the model (`MaskRCNN.features`,
# `rpn_outputs`, `proposals`, `box_outputs`, ...); `stages.run_stages`
# runs them all in one jitted program and returns each result as numpy.
#
# Weights: `MRCNN_NOTEBOOK_CHECKPOINT` (e.g. the `workdir/shapes` that
# `mrcnn-jax train` writes), else a short training run here (a few minutes
# on a CPU); quick mode (`MRCNN_NOTEBOOK_QUICK=1`) uses the tiny model
# untrained.

# %%
import jax
import numpy as np

from mrcnn_jax import notebook, preprocess, stages, visualize
from mrcnn_jax.client import to_original
from mrcnn_jax.data import datasets, shapes
from mrcnn_jax.evaluate import denormalize
from mrcnn_jax.experiment import build_model
from mrcnn_jax.input_spec import InputSpec
from mrcnn_jax.model import init_params

S = notebook.settings()
config = notebook.experiment_config(S)
info = datasets.dataset_info(config)
spec = InputSpec.from_config(config.data)
if S.quick and not S.checkpoint:
    model = build_model(config, info)
    variables, source = init_params(model, jax.random.PRNGKey(0)), "random initialisation"
else:
    model, variables, source = notebook.trained_variables(S, config, info)
print("weights:", source)

# %% [markdown]
# ## One image, prepared with numpy
#
# A validation image of the shapes dataset (drawn by the same generator,
# no TensorFlow needed), resized by the config's rule and padded onto the
# canvas by `preprocess.prepare_batch`.

# %%
example = shapes.draw_example(shapes.example_rng(config.data.dataset_seed, "validation", 3))
rgb = example["image"]
images, sizes = preprocess.prepare_batch([rgb], spec)
canvas = images.shape[1:3]
shown = denormalize(images[0], spec.mean, spec.std)  # the network input as a picture
out = stages.run_stages(model, variables, images, sizes)
print("image", rgb.shape[:2], "-> resized", tuple(sizes[0]), "on canvas", canvas)

# %% [markdown]
# ## FPN feature maps
#
# P2..P6 at strides 4..64, drawn as the root mean square over channels at
# each location (brighter: stronger response), each enlarged back to the
# canvas size.

# %%
fpn = {}
for level, f in enumerate(out["features"], start=2):
    stride = canvas[0] // f.shape[1]
    fpn[f"P{level}: {f.shape[1]}x{f.shape[2]}x{f.shape[3]}, stride {stride}"] = visualize.upscale(
        visualize.heatmap(stages.channel_rms(f[0])), stride)
notebook.show_images({"input": shown, **fpn}, "model_fpn", S, cols=6, size=2.5)

# %% [markdown]
# ## Anchors per level
#
# Each level places A anchors (one size, three aspect ratios) at every
# location of its grid; shown here at the location nearest the canvas
# centre.

# %%
anchor_pictures = {}
for level, (a, f) in enumerate(zip(out["anchors"], out["features"]), start=2):
    per_loc = a.shape[0] // (f.shape[1] * f.shape[2])
    centres = (a[:, :2] + a[:, 2:]) / 2
    centre = np.argmin(np.abs(centres - np.asarray(canvas[::-1]) / 2).sum(axis=1))
    first = centre - centre % per_loc
    anchor_pictures[f"P{level}: {a.shape[0]} anchors ({per_loc}/location)"] = visualize.draw_boxes(
        shown, a[first:first + per_loc], width=2)
notebook.show_images(anchor_pictures, "model_anchors", S, cols=5, size=2.5)

# %% [markdown]
# ## RPN objectness
#
# The probability that an object is centred at each location (the best of
# its A anchors), per level: small objects light up the fine levels, large
# ones the coarse levels.

# %%
objectness = {}
for level, (logits, f) in enumerate(zip(out["rpn_objectness"], out["features"]), start=2):
    stride = canvas[0] // f.shape[1]
    m = stages.objectness_map(logits[0], f.shape[1:3])
    objectness[f"P{level}: max {m.max():.2f}"] = visualize.upscale(visualize.heatmap(m, 0.0, 1.0), stride)
notebook.show_images({"input": shown, **objectness}, "model_objectness", S, cols=6, size=2.5)

# %% [markdown]
# ## Proposals before and after NMS
#
# Before NMS: each level's top `pre_nms_topk_test` anchors, decoded and
# clipped (`ops.postprocess.level_candidates`), many on the same object.
# After NMS (IoU 0.7 per level) and the merge over levels:
# `post_nms_topk_test` proposals. The 30 best of each are drawn.

# %%
cand = {k: np.concatenate([c[k][0] for c in out["candidates"]]) for k in ("boxes", "scores", "valid")}
order = np.argsort(-np.where(cand["valid"], cand["scores"], -1))[:30]
props = out["proposals"]
n_before, n_after = int(cand["valid"].sum()), int(props["valid"][0].sum())
best = np.flatnonzero(props["valid"][0])[:30]
notebook.show_images({
    f"before NMS: {n_before} candidates (best 30)": visualize.draw_boxes(shown, cand["boxes"][order]),
    f"after NMS: {n_after} proposals (best 30)": visualize.draw_boxes(shown, props["boxes"][0][best]),
}, "model_proposals", S, cols=2, size=4)
notebook.record(S, "inspect_model", candidates_before_nms=n_before, proposals_after_nms=n_after)

# %% [markdown]
# ## RoIAlign next to RoIPool
#
# To see what pooling does to a region, pool the *image* instead of a
# feature map: the image average-pooled by 8 stands for a stride-8 feature
# map, and each ground-truth box is pooled from it to 7 x 7 by RoIAlign
# (bilinear samples at exact positions), RoIWarp (the box rounded to the
# grid first) and RoIPool (box and bins rounded, then max), next to the
# region's true content. RoIPool's rounding shifts and stretches what it
# sees by up to half a feature cell (4 pixels here): the misalignment the
# paper's RoIAlign removes. The error is the mean absolute difference from
# the true content (image values in [0, 1]).

# %%
h, w = sizes[0]
scale = np.array([w / rgb.shape[1], h / rgb.shape[0]] * 2, np.float32)  # original -> input pixels
def tight_box(mask):  # xyxy of a mask, original pixels
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
gt_boxes = np.array([tight_box(m) for m in example["masks"]], np.float32) * scale
pooled = stages.compare_poolers(shown.astype(np.float32) / 255.0, gt_boxes, stride=8, output_size=7)
rows = []
for i in range(min(4, len(gt_boxes))):
    rows += [visualize.upscale(np.clip(pooled[k][i] * 255, 0, 255).astype(np.uint8), 8)
             for k in ("reference", "align", "warp", "pool")]
notebook.show_images(rows, "model_roi_pooling", S, cols=4, size=1.8,
                     suptitle="region | RoIAlign | RoIWarp | RoIPool (7 x 7 from a stride-8 map)")
errors = {k: float(pooled[f"error_{k}"].mean()) for k in ("align", "warp", "pool")}
print("mean absolute error against the region:", {k: round(v, 4) for k, v in errors.items()})
notebook.record(S, "inspect_model", pooling_error=errors)

# %% [markdown]
# ## Box head detections
#
# The box head classifies each proposal and refines its box per class;
# then per-class NMS and the score threshold leave the detections.

# %%
det = {k: v[0] for k, v in out["detections"].items()}
threshold = 0.0 if S.quick else 0.5
keep = det["valid"]
print(f"{keep.sum()} detections; scores:", np.round(det["scores"][keep][:10], 3))
notebook.show_images({"detections (boxes)": visualize.draw_detections(
    shown, det["boxes"][keep], det["scores"][keep], det["labels"][keep],
    class_names=info.class_names, score_threshold=threshold)}, "model_detections", S, cols=1, size=5)

# %% [markdown]
# ## Masks: 28 x 28 per detection, then pasted
#
# The mask head predicts an M x M mask of the detected class inside each
# detection's box; `client.to_original` maps the boxes back to the original
# image and pastes the masks into them (torchvision's rule).

# %%
n = int(min(8, keep.sum()))
small = [visualize.upscale(visualize.heatmap(m, 0.0, 1.0), 4) for m in det["masks"][:n]]
final = to_original(det, sizes[0], rgb.shape[:2])
pasted = visualize.draw_detections(rgb, final["boxes"], final["scores"], final["labels"],
                                   final["masks"], info.class_names, score_threshold=threshold)
if small:
    notebook.show_images(small, "model_mask_probabilities", S, cols=8, size=1.5,
                         suptitle=f"{det['masks'].shape[-1]} x {det['masks'].shape[-1]} mask probabilities")
notebook.show_images({"masks pasted into the original image": pasted}, "model_masks", S, cols=1, size=5)
notebook.record(S, "inspect_model", detections=int(keep.sum()))
