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
# # Inspect the data
#
# What the model is trained on, as it sees it: the synthetic shapes dataset
# and a COCO-format dataset, each through the tf.data pipeline
# (`mrcnn_jax.data`): resized, padded onto the canvas, ground-truth masks
# cropped to their boxes (and pasted back here to check them), how many
# instances there are, and what the input left out and why.
#
# Settings come from the environment (`mrcnn_jax.notebook`):
# `MRCNN_NOTEBOOK_QUICK=1` runs the tiny variant CI runs,
# `MRCNN_NOTEBOOK_DATA_DIR` the TFDS data dir. Figures are saved to
# `figures/` (or `MRCNN_NOTEBOOK_FIGURES`).

# %%
import collections
import os

import matplotlib.pyplot as plt
import numpy as np

from mrcnn_jax import notebook, visualize
from mrcnn_jax.client import paste_masks
from mrcnn_jax.data import coco, datasets, shapes
from mrcnn_jax.evaluate import denormalize
from mrcnn_jax.input_spec import InputSpec

S = notebook.settings()
config = notebook.experiment_config(S)
info = datasets.dataset_info(config)
spec = InputSpec.from_config(config.data)
print(S)
print("classes:", info.class_names, "| canvas:", spec.canvases, "| short side:", spec.min_sizes,
      "| max instances:", config.data.max_instances, "| mask crop:", config.data.gt_mask_size)

# %% [markdown]
# ## The shapes dataset as stored
#
# Images of 128-256 pixels, squares, circles and triangles that occlude
# each other; each object's mask is its visible part.

# %%
kw = dict(num_train=config.data.num_train, num_validation=config.data.num_validation,
          seed=config.data.dataset_seed)
raw = list(shapes.load_shapes("train", config.data.data_dir, **kw).take(4).as_numpy_iterator())
pictures = {}
for ex in raw:
    image = ex["image"]
    h, w = image.shape[:2]
    ymin, xmin, ymax, xmax = ex["objects"]["bbox"].T  # normalised yxyx (TFDS)
    boxes = np.stack([xmin * w, ymin * h, xmax * w, ymax * h], axis=1)
    labels = ex["objects"]["label"] + 1
    masks = ex["objects"]["mask"][..., 0] > 0
    pictures[f"image {ex['image_id']}: {h}x{w}, {len(labels)} objects"] = visualize.draw_detections(
        image, boxes, np.ones(len(labels)), labels, masks, info.class_names, score_threshold=0.0)
notebook.show_images(pictures, "data_raw", S, cols=4)

# %% [markdown]
# ## Through the pipeline: what the model sees
#
# `datasets.train_iterator` resizes each image (short side
# `config.data.min_size`, long side at most `max_size`), flips half of
# them, normalises and pads onto the canvas. Ground truth comes as at most
# `max_instances` boxes (`xyxy` in canvas pixels) with `gt_valid`, and each
# mask **cropped to its box** at `gt_mask_size` x `gt_mask_size`: that is
# the form the mask head's targets are cut from. Below, the masks are pasted
# back into their boxes (`client.paste_masks`, the rule used for
# predictions) to check that nothing moved.

# %%
batch = next(datasets.train_iterator(config, (4,)))
canvas = batch["image"].shape[1:3]
pictures, crops = {}, []
for i in range(4):
    valid = batch["gt_valid"][i]
    boxes, labels = batch["gt_boxes"][i][valid], batch["gt_labels"][i][valid]
    cropped = batch["gt_masks"][i][valid]
    pasted = paste_masks(cropped, boxes, canvas) > 0.5
    image = denormalize(batch["image"][i], spec.mean, spec.std)
    h, w = batch["image_size"][i]
    pictures[f"canvas {canvas[0]}x{canvas[1]}, image {h}x{w}"] = visualize.draw_detections(
        image, boxes, np.ones(len(labels)), labels, pasted, info.class_names, score_threshold=0.0)
    crops += [visualize.heatmap(m, 0.0, 1.0) for m in cropped]
notebook.show_images(pictures, "data_pipeline", S, cols=4)
notebook.show_images(crops[:16], "data_mask_crops", S, cols=8, size=1.2,
                     suptitle=f"ground-truth masks cropped to their boxes "
                              f"({config.data.gt_mask_size} x {config.data.gt_mask_size})")

# %% [markdown]
# ## Instance counts
#
# Over the validation split's ground truth (the COCO-format dict that
# pycocotools evaluates against) and over training batches, with what the
# pipeline left out: objects beyond `max_instances` (the smallest go
# first), zero-area boxes and crowd regions.

# %%
gt = datasets.eval_coco_gt(config)
per_class = collections.Counter(a["category_id"] for a in gt["annotations"])
per_image = collections.Counter(a["image_id"] for a in gt["annotations"])
dropped = collections.Counter()
num_batches = 2 if S.quick else 50
seen = 0
for _, b in zip(range(num_batches), datasets.train_iterator(config, (config.batch_size,))):
    for k in ("num_dropped", "num_invalid", "num_crowd"):
        dropped[k] += int(b[k].sum())
    seen += len(b["image_id"])
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
axes[0].bar([info.class_names[c] for c in sorted(per_class)], [per_class[c] for c in sorted(per_class)])
axes[0].set_title("validation objects per class")
counts = np.bincount(list(per_image.values()))
axes[1].bar(np.arange(len(counts)), counts)
axes[1].set_title("validation images by objects per image")
axes[2].bar(list(dropped), list(dropped.values()))
axes[2].set_title(f"left out in {seen} training images")
fig.tight_layout()
notebook.save_figure(fig, "data_counts", S)
plt.show()
notebook.record(S, "inspect_data", objects_per_class={info.class_names[c]: n for c, n in per_class.items()},
                training_images_seen=seen, **dropped)
print(dict(dropped))

# %% [markdown]
# ## A COCO-format dataset
#
# Your own data in COCO's json format goes through the same pipeline
# (`config.data.name = "coco_format"`). Set `MRCNN_COCO_JSON` and
# `MRCNN_COCO_IMAGES` to look at yours; otherwise a small one is written
# from drawn shapes (`shapes.write_coco_format`), with a crowd region, an
# annotation with a zero-area box and one with an unknown category id, to
# show what happens to them: the two bad annotations are skipped and
# counted when the dataset is prepared, the crowd region is kept for
# evaluation but never becomes ground truth.

# %%
coco_json, coco_images = os.environ.get("MRCNN_COCO_JSON"), os.environ.get("MRCNN_COCO_IMAGES")
if not coco_json:
    coco_json, coco_images = shapes.write_coco_format(os.path.join(S.workdir, "coco_format_demo"),
                                                      num_images=6)
ccfg = notebook.experiment_config(S)
ccfg.data.name = "coco_format"
ccfg.data.train_json, ccfg.data.train_images = coco_json, coco_images
ccfg.model.num_classes = 0  # from the dataset
ccfg.data.class_names = ()  # the dataset's own names
cinfo = datasets.dataset_info(ccfg)
builder = coco.coco_builder(ccfg.data.data_dir, datasets.coco_source(ccfg))
stats = coco.coco_split_stats(builder, "train")
print("classes:", cinfo.class_names, "| label -> category id:", cinfo.label_to_category_id)
print({k: v for k, v in stats.items() if not k.endswith("_ids") and v})

# %%
cbatch = next(datasets.train_iterator(ccfg, (4,)))
cspec = InputSpec.from_config(ccfg.data)
pictures = {}
for i in range(4):
    valid = cbatch["gt_valid"][i]
    boxes, labels = cbatch["gt_boxes"][i][valid], cbatch["gt_labels"][i][valid]
    pasted = paste_masks(cbatch["gt_masks"][i][valid], boxes, cbatch["image"].shape[1:3]) > 0.5
    title = (f"id {cbatch['image_id'][i]}: {valid.sum()} objects, "
             f"{cbatch['num_crowd'][i]} crowd, {cbatch['num_dropped'][i]} beyond max")
    pictures[title] = visualize.draw_detections(
        denormalize(cbatch["image"][i], cspec.mean, cspec.std), boxes, np.ones(len(labels)),
        labels, pasted, cinfo.class_names, score_threshold=0.0)
notebook.show_images(pictures, "data_coco_format", S, cols=4)
notebook.record(S, "inspect_data", coco_format_stats={k: v for k, v in stats.items() if not k.endswith("_ids")})
