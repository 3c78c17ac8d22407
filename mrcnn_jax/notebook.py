"""What the notebooks in ``experiments/notebooks/`` share: their settings,
read from the environment, the experiment they run, and showing a figure
while saving it as a PNG.

Environment (all optional):

  MRCNN_NOTEBOOK_QUICK=1     tiny model, few steps, tiny data
                             (``experiments/shapes_tiny.py``): what CI runs
  MRCNN_NOTEBOOK_FIGURES     where figures and ``results.json`` go
                             (default ``figures/`` next to the notebook)
  MRCNN_NOTEBOOK_DATA_DIR    the TFDS data dir (default: TFDS's own)
  MRCNN_NOTEBOOK_WORKDIR     where checkpoints and exports go
                             (default ``workdir/notebooks/`` under the cwd)
  MRCNN_NOTEBOOK_CHECKPOINT  trained weights to use: a training workdir, a
                             converted directory or a torchvision .pth (with
                             MRCNN_NOTEBOOK_CONFIG, the config file that
                             built it, e.g. mask_rcnn_r50_fpn.py)

matplotlib (the optional ``[notebooks]`` extra) is imported only when a
figure is drawn.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Settings", "experiment_config", "record", "save_figure", "settings", "show_images",
           "trained_variables"]


@dataclasses.dataclass(frozen=True)
class Settings:
  quick: bool
  figures_dir: str
  data_dir: str | None
  workdir: str
  checkpoint: str | None = None
  config_file: str | None = None


def settings() -> Settings:
  """The notebook settings from the environment (module docstring)."""
  env = os.environ.get
  s = Settings(quick=env("MRCNN_NOTEBOOK_QUICK", "0").strip() not in ("", "0"),
               figures_dir=os.path.abspath(env("MRCNN_NOTEBOOK_FIGURES") or "figures"),
               data_dir=env("MRCNN_NOTEBOOK_DATA_DIR") or None,
               workdir=os.path.abspath(env("MRCNN_NOTEBOOK_WORKDIR")
                                       or os.path.join("workdir", "notebooks")),
               checkpoint=env("MRCNN_NOTEBOOK_CHECKPOINT") or None,
               config_file=env("MRCNN_NOTEBOOK_CONFIG") or None)
  os.makedirs(s.figures_dir, exist_ok=True)
  return s


def experiment_config(s: Settings):
  """``MRCNN_NOTEBOOK_CONFIG`` if set, else ``experiments/shapes.py``, or
  ``shapes_tiny.py`` in quick mode, with the settings' data dir."""
  from mrcnn_jax.cli import load_config
  config = load_config(s.config_file or ("shapes_tiny.py" if s.quick else "shapes.py"))
  config.data.data_dir = s.data_dir
  return config


def save_figure(fig, name: str, s: Settings, dpi: int = 72) -> str:
  """Saves a matplotlib figure as ``<figures_dir>/<name>.png`` with a
  256-colour palette (no dithering: noisy pictures stay a few times smaller
  than in full colour); returns the path."""
  import io

  from PIL import Image
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
  buf.seek(0)
  image = Image.open(buf).convert("RGB")
  path = os.path.join(s.figures_dir, f"{name}.png")
  image.quantize(colors=256, dither=Image.Dither.NONE).save(path, format="PNG", optimize=True)
  return path


def show_images(images: Sequence[np.ndarray] | Mapping[str, np.ndarray], name: str,
                s: Settings, cols: int = 4, size: float = 3.0, suptitle: str | None = None):
  """Draws uint8 ``[H, W, 3]`` images (a list, or titles -> images) in a
  grid of ``cols`` columns, shows it and saves it as ``<name>.png``
  (``save_figure``). Returns the figure."""
  import matplotlib.pyplot as plt
  items = list(images.items()) if isinstance(images, Mapping) else [(None, im) for im in images]
  if not items:
    raise ValueError(f"show_images({name!r}): no images")
  cols = max(1, min(cols, len(items)))
  rows = -(-len(items) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, (title, im) in zip(axes.ravel(), items):
    ax.imshow(np.asarray(im), interpolation="nearest")
    if title:
      ax.set_title(title, fontsize=9)
  if suptitle:
    fig.suptitle(suptitle)
  fig.tight_layout()
  save_figure(fig, name, s)
  plt.show()
  return fig


def record(s: Settings, notebook: str, **values) -> dict:
  """Adds ``values`` under ``notebook`` in ``<figures_dir>/results.json``
  (what a notebook measured, for its reader and for the tests); returns
  that notebook's entry."""
  path = os.path.join(s.figures_dir, "results.json")
  data = {}
  if os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
  entry = data.setdefault(notebook, {})
  entry.update({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in values.items()})
  with open(path, "w") as f:
    json.dump(data, f, indent=1, sort_keys=True)
  return entry


def trained_variables(s: Settings, config, info, *, steps: int = 200):
  """(model, variables, source) for the notebooks that need a trained model.

  With ``MRCNN_NOTEBOOK_CHECKPOINT`` set: its variables
  (``evaluate.load_inference_variables``: a training workdir's latest
  checkpoint, a converted directory or a torchvision .pth). Otherwise a
  short run of ``config`` is trained into ``<workdir>/trained`` (``steps``
  steps, ``config.total_steps`` in quick mode; a finished run there is
  reused) with ``train.train``.
  """
  from mrcnn_jax import evaluate, experiment, train
  model = experiment.build_model(config, info)
  if s.checkpoint:
    is_workdir = os.path.isdir(os.path.join(s.checkpoint, "checkpoints"))
    variables, step = evaluate.load_inference_variables(
        model, workdir=s.checkpoint if is_workdir else None,
        checkpoint=None if is_workdir else s.checkpoint)
    return model, variables, f"{s.checkpoint} (step {step})"
  config = config.copy_and_resolve_references()
  if not s.quick:
    config.total_steps = steps
  workdir = os.path.join(s.workdir, "trained")
  state = train.train(config, workdir, info=info)
  return model, evaluate.state_variables(state), f"trained here: {workdir} ({int(state.step)} steps)"
