"""Executes the notebooks of experiments/notebooks top to bottom (nbclient)
and keeps their figures: how the README's notebook pictures were made.

  python scripts/run_notebooks.py --figures /tmp/nb/figures \\
      --checkpoint workdir/shapes            # inspect_model, use_a_model use it
  python scripts/run_notebooks.py --quick --only inspect_model

Settings reach the notebooks through the environment (``mrcnn_jax.notebook``);
``--executed DIR`` also writes each executed notebook (with outputs) there.
Prints each notebook's wall time; stops at the first error.
"""

import argparse
import os
import sys
import time

import jupytext
import nbclient
import nbformat

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NOTEBOOKS = os.path.join(REPO, "experiments", "notebooks")
ORDER = ("inspect_data", "inspect_model", "train_step_by_step", "use_a_model")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="MRCNN_NOTEBOOK_QUICK=1 (tiny model)")
  p.add_argument("--only", default=",".join(ORDER), help="comma-separated notebook names")
  p.add_argument("--figures", help="MRCNN_NOTEBOOK_FIGURES (default: figures/ next to them)")
  p.add_argument("--workdir", help="MRCNN_NOTEBOOK_WORKDIR")
  p.add_argument("--data_dir", help="MRCNN_NOTEBOOK_DATA_DIR")
  p.add_argument("--checkpoint", help="MRCNN_NOTEBOOK_CHECKPOINT (trained weights)")
  p.add_argument("--executed", help="write the executed notebooks into this folder")
  p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
  args = p.parse_args(argv)
  env = {"MRCNN_NOTEBOOK_QUICK": "1" if args.quick else "0", "MRCNN_NOTEBOOK_FIGURES": args.figures,
         "MRCNN_NOTEBOOK_WORKDIR": args.workdir, "MRCNN_NOTEBOOK_DATA_DIR": args.data_dir,
         "MRCNN_NOTEBOOK_CHECKPOINT": args.checkpoint}
  for k, v in env.items():
    if v:
      os.environ[k] = os.path.abspath(v) if k != "MRCNN_NOTEBOOK_QUICK" else v
  os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend keeps the images
  os.environ["PYTHONPATH"] = os.pathsep.join(
      [REPO] + [q for q in os.environ.get("PYTHONPATH", "").split(os.pathsep) if q])
  for name in args.only.split(","):
    if name not in ORDER:
      sys.exit(f"unknown notebook {name!r}; choose from {ORDER}")
    nb = jupytext.read(os.path.join(NOTEBOOKS, f"{name}.py"))
    start = time.time()
    nbclient.NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": NOTEBOOKS}}).execute()
    print(f"{name}: {time.time() - start:.1f} s", flush=True)
    if args.executed:
      os.makedirs(args.executed, exist_ok=True)
      nbformat.write(nb, os.path.join(args.executed, f"{name}.ipynb"))


if __name__ == "__main__":
  main()
