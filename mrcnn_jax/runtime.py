"""Process and device set-up that has to happen before JAX's first
computation (after it, JAX's devices are fixed for the life of the process).

CPU devices. XLA:CPU runs one program on one device with intra-op threads
for the large operations (convolutions, matrix products) only; the rest of a
Mask R-CNN step -- sorts, NMS loops, gathers, scatters, small fusions -- runs
on one thread. Splitting each batch over several CPU devices, one per core,
runs those parts side by side: on a 2-core machine the shapes train step went
from 1.2-1.4 s on one device to 0.88-0.97 s on two (batch 8; the same update:
the step averages gradients over devices and samples with per-image keys;
``scripts/benchmark_train.py --devices``). So,
unless told otherwise, the trainer and the evaluation use as many CPU devices
as there are usable cores, at most the largest number that divides every
batch size of the run. On an accelerator this changes nothing: the CPU
devices exist but are not used.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Iterable

log = logging.getLogger("mrcnn_jax")

_FLAG = "xla_force_host_platform_device_count"


def usable_cores() -> int:
  """Cores this process may run on (its CPU affinity, not the machine's)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def cpu_device_count(batch_sizes: Iterable[int], cores: int | None = None) -> int:
  """The largest number of devices <= ``cores`` that divides every batch size."""
  cores = usable_cores() if cores is None else int(cores)
  common = 0
  for b in batch_sizes:
    common = math.gcd(common, int(b))
  return max(n for n in range(1, max(1, cores) + 1) if common % n == 0) if common else 1


def configure_cpu_devices(config) -> int | None:
  """Sets JAX's number of CPU devices from ``config.cpu_devices`` (0: one per
  usable core, see the module docstring; N: N devices) before JAX starts.

  Returns the number set, or None where it was left alone: the environment
  already fixes it (``XLA_FLAGS=--xla_force_host_platform_device_count=N``),
  or JAX has already computed something in this process (a notebook), in
  which case the devices it has are used and this is logged.
  """
  import jax

  wanted = int(config.get("cpu_devices", 0) or 0)
  if wanted < 0:
    raise ValueError(f"config.cpu_devices must be >= 0 (0 = one per core), got {wanted}")
  if _FLAG in os.environ.get("XLA_FLAGS", ""):
    return None
  if wanted == 0:
    sizes = [config.batch_size] + ([config.eval_batch_size] if "eval_batch_size" in config
                                   else [])
    wanted = cpu_device_count(sizes)
  if wanted == int(jax.config.jax_num_cpu_devices):
    return wanted
  try:
    jax.config.update("jax_num_cpu_devices", wanted)
  except RuntimeError as e:  # JAX is already running in this process
    log.info("keeping JAX's CPU devices as they are (%s)", str(e).split(";")[0].split(".")[0])
    return None
  return wanted
