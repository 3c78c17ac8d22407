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
# # Train step by step
#
# Training without the trainer's loop, one piece at a time: build the
# state, pull batches from the tf.data pipeline, call the pure
# `train.train_step` directly, plot the named losses as they fall, look at
# the targets the step trained on (RPN anchors, sampled RoIs, mask targets),
# save and restore the state with orbax, and evaluate with pycocotools.
#
# `MRCNN_NOTEBOOK_QUICK=1` runs the tiny model for a few steps (CI);
# otherwise the shapes model trains for a few minutes on a CPU.

# %%
import functools
import os

import jax
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from mrcnn_jax import checkpoints, coco_eval, evaluate, experiment, notebook, stages, train, visualize
from mrcnn_jax.client import paste_masks
from mrcnn_jax.data import datasets
from mrcnn_jax.input_spec import InputSpec
from mrcnn_jax.model import variables_template

S = notebook.settings()
config = notebook.experiment_config(S)
info = datasets.dataset_info(config)
num_steps = 30 if S.quick else 200
if S.quick:  # the tiny model is unsteady at the shapes learning rate
    config.optimizer.base_lr = 0.01
print(S, "| steps:", num_steps, "| batch:", config.batch_size)

# %% [markdown]
# ## The state
#
# The model is built from `config.model`; the optimiser from
# `config.optimizer` (shapes: AdamW with warmup and a cosine decay; quick
# mode and the R50 recipes: SGD with momentum and step decay; weight decay on
# kernels only, either way). The state holds
# the step, parameters, BatchNorm statistics (none here: GroupNorm) and the
# optimiser state.

# %%
model = experiment.build_model(config, info)
template = variables_template(model)
tx = train.make_optimizer(config, template["params"], model)
state = train.create_train_state(config, jax.random.PRNGKey(config.seed), model, tx)
num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
print(f"{num_params:,} parameters")

# %% [markdown]
# ## The step, called directly
#
# `train.train_step(state, batch, rng)` is a pure function; here it runs
# under `jax.jit` on one device (`axis_name=None`; the trainer runs it under
# `jax.pmap` over all devices). Batches come from
# `datasets.train_iterator` with one leading batch axis.

# %%
step_fn = jax.jit(functools.partial(train.train_step, model=model, tx=tx,
                                    loss_weights=dict(config.loss_weights), axis_name=None))
batches = datasets.train_iterator(config, (config.batch_size,))
rng = jax.random.PRNGKey(1)
history = []
for i in range(num_steps):
    batch = next(batches)
    inputs = {k: v for k, v in batch.items() if k in train.MODEL_INPUTS or k.startswith("gt_")}
    state, metrics = step_fn(state, inputs, rng)
    history.append(jax.device_get(metrics))
    if i % max(1, num_steps // 10) == 0 or i == num_steps - 1:
        print(f"step {i + 1:4d}  loss {float(metrics['loss']):.3f}")

# %% [markdown]
# ## The named losses as they fall

# %%
names = [k for k in history[0] if k.startswith("loss")]
fig, ax = plt.subplots(figsize=(7, 4))
for name in names:
    ax.plot(np.arange(1, num_steps + 1), [float(h[name]) for h in history], label=name,
            lw=2.5 if name == "loss" else 1.2)
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.legend(fontsize=8)
ax.set_title("named losses, one train_step at a time")
notebook.save_figure(fig, "train_losses", S)
plt.show()
k = max(1, num_steps // 3)
total = np.array([float(h["loss"]) for h in history])
first, last = float(total[:k].mean()), float(total[-k:].mean())
print(f"mean loss of the first {k} steps {first:.3f} -> last {k} steps {last:.3f}")
notebook.record(S, "train_step_by_step", steps=num_steps, loss_first=first, loss_last=last,
                losses_last={n: float(history[-1][n]) for n in names})
assert last < first, "the loss did not fall"

# %% [markdown]
# ## The targets of one batch
#
# What the step trained on, from `MaskRCNN.train_outputs`
# (`stages.run_train_outputs`): anchors labelled positive (IoU >= 0.7 with
# a ground-truth box, or its best anchor) among the sampled ones; the
# sampled RoIs, positives (IoU >= 0.5, green) and a few negatives (red); and
# each positive RoI's mask target, the ground-truth mask resampled into the
# RoI at M x M.

# %%
variables = evaluate.state_variables(state)
t = stages.run_train_outputs(model, variables, inputs, jax.random.PRNGKey(2))
canvas = inputs["image"].shape[1:3]
anchors = np.concatenate(stages.anchors(model, variables, canvas))
spec = InputSpec.from_config(config.data)
image = evaluate.denormalize(inputs["image"][0], spec.mean, spec.std)
pos_anchors = anchors[t["rpn_target_labels"][0] == 1]
pos = t["roi_is_pos"][0] & t["roi_valid"][0]
neg = ~t["roi_is_pos"][0] & t["roi_valid"][0]
rois = np.concatenate([t["roi_boxes"][0][pos], t["roi_boxes"][0][neg][:10]])
colors = [(0, 220, 0)] * int(pos.sum()) + [(230, 0, 0)] * min(10, int(neg.sum()))
mine = (t["mask_batch_index"] == 0) & t["mask_valid"]
mask_t = t["mask_targets"][mine]
pasted = paste_masks(mask_t, t["mask_rois"][mine], canvas) > 0.5
pictures = {
    f"ground truth ({int(inputs['gt_valid'][0].sum())})": visualize.draw_boxes(
        image, inputs["gt_boxes"][0][inputs["gt_valid"][0]], colors=(255, 255, 0), width=2),
    f"RPN positive anchors ({len(pos_anchors)})": visualize.draw_boxes(image, pos_anchors, colors=(0, 220, 0)),
    f"sampled RoIs: {int(pos.sum())} positive, {int(neg.sum())} negative": visualize.draw_boxes(image, rois, colors),
    f"mask targets pasted back ({len(mask_t)} RoIs)": visualize.draw_detections(
        image, t["mask_rois"][mine], np.ones(len(mask_t)), t["mask_labels"][mine], pasted,
        info.class_names, score_threshold=0.0),
}
notebook.show_images(pictures, "train_targets", S, cols=4, size=3)
if len(mask_t):
    notebook.show_images([visualize.upscale(visualize.heatmap(m, 0.0, 1.0), 3) for m in mask_t[:8]],
                         "train_mask_targets", S, cols=8, size=1.3,
                         suptitle=f"{mask_t.shape[-1]} x {mask_t.shape[-1]} mask targets of image 0")

# %% [markdown]
# ## Save and restore with orbax
#
# The trainer's own checkpoint functions: an orbax `CheckpointManager` in
# `<workdir>/checkpoints`, restored into a template made by `jax.eval_shape`
# (no computation, no second model initialisation).

# %%
workdir = os.path.join(S.workdir, "train_step_by_step")
mngr = checkpoints.checkpoint_manager(workdir, max_to_keep=1)
checkpoints.save_train_state(mngr, state, {"step": int(state.step)}, force=True)
mngr.wait_until_finished()
restored, meta = checkpoints.restore_train_state(mngr, train.train_state_template(template, tx))
mngr.close()
same = jax.tree_util.tree_all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), state, restored))
print(f"restored step {int(restored.step)} from {mngr.directory}; identical to the saved state: {same}")
assert same
notebook.record(S, "train_step_by_step", restored_identical=same)

# %% [markdown]
# ## Evaluate with pycocotools
#
# Inference over the validation split (`evaluate.predict`: detections
# mapped back to each original image, masks pasted), turned into COCO
# results, and scored by pycocotools' `COCOeval` against the split's ground
# truth (`coco_eval.evaluate_coco` prints its table).

# %%
ndev = jax.local_device_count()
eval_batches = datasets.eval_iterator(config, (ndev, config.eval_batch_size // ndev))
results, samples = [], []
restored_vars = evaluate.state_variables(restored)
for ex, det in evaluate.predict(model, restored_vars, eval_batches):
    results += coco_eval.detections_to_coco(int(ex["image_id"]), det["boxes"], det["scores"],
                                            det["labels"], det["masks"])
    if len(samples) < 4:
        h, w = ex["image_size"]
        oh, ow = (int(v) for v in ex["orig_size"])
        shown = evaluate.denormalize(ex["image"][:h, :w], spec.mean, spec.std)
        shown = np.asarray(Image.fromarray(shown).resize((ow, oh), Image.BILINEAR))  # original size
        samples.append(visualize.draw_detections(shown, det["boxes"], det["scores"], det["labels"],
                                                 det["masks"], info.class_names, score_threshold=0.5))
metrics = coco_eval.evaluate_coco(datasets.eval_coco_gt(config), results)
notebook.record(S, "train_step_by_step", **{k: metrics[k] for k in ("bbox/AP", "segm/AP", "bbox/AP50")})
if samples:
    notebook.show_images(samples, "train_predictions", S, cols=4, size=3,
                         suptitle=f"after {num_steps} steps: bbox AP {metrics['bbox/AP']:.1f}, "
                                  f"segm AP {metrics['segm/AP']:.1f}")
