"""Helpers shared by the benchmark scripts: device description, timing,
peak memory, the optional torch import. Imports neither TensorFlow nor torch
at module level."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def median_seconds(fn, runs: int, warmup: int = 1) -> tuple[float, list[float]]:
  """Median wall seconds of ``fn()`` over ``runs`` calls after ``warmup``."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def peak_rss_bytes() -> int:
  """This process's peak resident set size (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def import_torch():
  """(torch, torchvision) or (None, reason)."""
  try:
    import torch
    import torchvision
  except Exception as e:  # ImportError, or a broken CUDA/torch install
    return None, f"{type(e).__name__}: {e}"
  return (torch, torchvision), None


def print_json_line(record: dict, out: str | None = None, append: bool = False):
  """Prints ``record`` as one JSON line, and writes (or appends) it to ``out``."""
  import json
  line = json.dumps(record)
  if out:
    with open(out, "a" if append else "w") as f:
      f.write(line + "\n")
  print(line)


def jax_device_description() -> str:
  import jax
  d = jax.devices()[0]
  desc = f"{d.platform}:{d.device_kind}"
  if d.platform == "cpu":
    desc += f" ({cpu_name()}, {usable_cores()} usable cores)"
  return desc
