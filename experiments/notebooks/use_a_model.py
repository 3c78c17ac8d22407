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
# # Use a model
#
# Load a trained model, predict on your own images, draw the detections,
# then export it (StableHLO, `mrcnn_jax.export`) and run the exported
# artifact the way a server would, with nothing of `mrcnn_jax` but its
# numpy client.
#
# Weights: `MRCNN_NOTEBOOK_CHECKPOINT`: a training workdir (`mrcnn-jax
# train` writes `workdir/shapes`), a directory written by `mrcnn-jax
# convert`, or a torchvision `maskrcnn_resnet50_fpn` `.pth` (then set
# `MRCNN_NOTEBOOK_CONFIG=mask_rcnn_r50_fpn.py`). Without one, the shapes
# model is trained here for a few minutes (the tiny one for a few steps in
# quick mode). Images: `MRCNN_NOTEBOOK_IMAGES`, a folder; without it a few
# new shapes images are drawn.

# %%
import os

import jax
import numpy as np

from mrcnn_jax import client, export, image_io, notebook, predict, preprocess, visualize
from mrcnn_jax.data import datasets, shapes
from mrcnn_jax.input_spec import InputSpec

S = notebook.settings()
config = notebook.experiment_config(S)
info = datasets.dataset_info(config)
spec = InputSpec.from_config(config.data)
model, variables, source = notebook.trained_variables(S, config, info, steps=300)
print("weights:", source)

# %% [markdown]
# ## Your images
#
# Any image files: read with PIL (`image_io.read_rgb`), resized and padded
# with numpy by the config's input rule (`preprocess.prepare_batch`), run
# through the jitted model, and the detections mapped back to each image's
# own pixels with the masks pasted (`client.to_original`).

# %%
image_dir = os.environ.get("MRCNN_NOTEBOOK_IMAGES")
if not image_dir:  # shapes the model has never seen (indices past the dataset's)
    image_dir = os.path.join(S.workdir, "my_images")
    os.makedirs(image_dir, exist_ok=True)
    for i in range(4):
        ex = shapes.draw_example(shapes.example_rng(1234, "validation", i))
        visualize.save_png(os.path.join(image_dir, f"new_{i}.png"), ex["image"])
paths = predict.find_images([image_dir])
infer = jax.jit(model.apply)
threshold = 0.0 if S.quick else 0.5
overlays = {}
for path in paths[:8]:
    rgb = image_io.read_rgb(path)
    images, sizes = preprocess.prepare_batch([rgb], spec)
    out = jax.device_get(infer(variables, images, sizes))
    det = client.to_original({k: v[0] for k, v in out.items()}, sizes[0], rgb.shape[:2])
    overlays[f"{os.path.basename(path)}: {int((det['scores'] >= threshold).sum())} detections"] = (
        visualize.draw_detections(rgb, det["boxes"], det["scores"], det["labels"], det["masks"],
                                  info.class_names, score_threshold=threshold))
notebook.show_images(overlays, "use_predictions", S, cols=4, size=3)

# %% [markdown]
# ## Export and run the exported model
#
# `export.export` writes `model.stablehlo` (the model with its weights as
# constants, serialized by `jax.export`), `export.json` (the interface and
# the resize rule) and `client.py` (numpy only). The artifact takes uint8
# images on the canvas and returns boxes, scores, dataset category ids and
# masks; `client.prepare` and `client.to_original` do the resizing both
# ways. Here the artifact is loaded with `jax.export.deserialize` alone and
# its detections are compared with the model's.

# %%
export_dir = os.path.join(S.workdir, "export")
info_json = export.export(model, variables, spec, class_names=info.class_names,
                          label_to_category_id=info.label_to_category_id, output_dir=export_dir,
                          formats=("stablehlo",), platforms=("cpu",), overwrite=True,
                          config_name=S.config_file or ("shapes_tiny" if S.quick else "shapes"))
print(sorted(os.listdir(export_dir)), info_json["canvas"], list(info_json["outputs"]))

# %%
with open(os.path.join(export_dir, "model.stablehlo"), "rb") as f:
    exported = jax.export.deserialize(f.read())  # needs jax only
table = np.asarray(info_json["category_ids"])  # label -> category id
label_of = {cat: label for label, cat in enumerate(table)}
exported_overlays, max_box_diff, same = {}, 0.0, True
for path in paths[:8]:
    rgb = image_io.read_rgb(path)
    images, sizes, originals = client.prepare([rgb], info_json)  # numpy only
    out = {k: np.asarray(v) for k, v in exported.call(images, sizes).items()}
    # The JAX model on the same input, normalised and zero-padded as the artifact does it.
    x = (images.astype(np.float32) / 255.0 - np.float32(spec.mean)) / np.float32(spec.std)
    x[:, sizes[0, 0]:], x[:, :, sizes[0, 1]:] = 0.0, 0.0
    ref = jax.device_get(infer(variables, x, sizes))
    valid = out["valid"][0]
    same &= bool(np.array_equal(valid, ref["valid"][0])
                 and np.array_equal(out["labels"][0][valid], table[ref["labels"][0][valid]]))
    if valid.any():
        max_box_diff = max(max_box_diff,
                           float(np.abs(out["boxes"][0][valid] - ref["boxes"][0][valid]).max()))
    det = client.to_original({k: v[0] for k, v in out.items()}, sizes[0], originals[0])
    labels = np.array([label_of[int(c)] for c in det["labels"]], np.int64)  # category id -> label
    exported_overlays[f"exported: {os.path.basename(path)}"] = visualize.draw_detections(
        rgb, det["boxes"], det["scores"], labels, det["masks"], info.class_names,
        score_threshold=threshold)
notebook.show_images(exported_overlays, "use_exported", S, cols=4, size=3)
print(f"exported artifact vs the JAX model: same detections and labels: {same}; "
      f"largest box difference {max_box_diff:.2e} px")
notebook.record(S, "use_a_model", weights=source, images=len(overlays),
                exported_same_detections=same, exported_max_box_diff_px=max_box_diff)
