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

Huge pages for XLA:CPU's buffers. Each run of a compiled program allocates
its temporaries afresh (the shapes train step: 0.20 GiB per device) and
frees them after; glibc serves allocations that large with a new ``mmap``
and returns them with ``munmap``, so every step faults the same memory in
again, 4 KiB at a time: about 100 thousand page faults per shapes step,
15% of the main job's CPU time as system time. With glibc's
``glibc.malloc.hugetlb=1`` tunable (glibc >= 2.35) those mappings are
advised as transparent huge pages, 2 MiB a fault. The tunable is read
when a process starts, so the ``mrcnn-jax`` command starts itself once
more with it set (:func:`reexec_with_huge_page_malloc`): shapes step 0.80-0.85 s
against 0.89-1.04 s (4 A/B pairs, README "Speed"). ``MRCNN_JAX_HUGEPAGES=0``
turns it off; a ``GLIBC_TUNABLES`` that already names the tunable is kept.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Iterable, Mapping, Sequence

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


HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):  # not glibc, or not Linux
    return None


def _thp_mode(path: str = _THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode: "always", "madvise", "never"."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  return text[text.index("[") + 1:text.index("]")] if "[" in text and "]" in text else None


def huge_page_malloc_env(environ: Mapping[str, str], *, glibc: tuple[int, int] | None,
                         thp_mode: str | None) -> dict[str, str] | None:
  """The environment to start again with (``GLIBC_TUNABLES`` with
  :data:`HUGE_PAGE_TUNABLE` added), or None where that would change nothing:
  not glibc >= 2.35, transparent huge pages off or unknown, turned off with
  ``MRCNN_JAX_HUGEPAGES=0``, or ``GLIBC_TUNABLES`` already sets it."""
  if environ.get("MRCNN_JAX_HUGEPAGES", "1") == "0":
    return None
  if glibc is None or glibc < (2, 35) or thp_mode not in ("always", "madvise"):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGE_TUNABLE}" if tunables else HUGE_PAGE_TUNABLE
  return env


def reexec_with_huge_page_malloc(python_args: Sequence[str]) -> None:
  """Replaces this process with ``python *python_args`` under
  :func:`huge_page_malloc_env`'s environment, or returns where that is None.
  Call it first thing, before JAX is imported (it starts over)."""
  env = huge_page_malloc_env(os.environ, glibc=_glibc_version(), thp_mode=_thp_mode())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *python_args], env)
