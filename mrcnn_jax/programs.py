"""Programs compiled ahead of time, and their memory checked before they
first run; :func:`replicate` lays their replicated arguments out.

:class:`Program` compiles a pmapped function once per input signature
(``fn.lower(...).compile()``; e.g. one train-step program per canvas) and
runs the compiled executable itself, so the program whose memory was
analysed is the one that runs and nothing compiles twice. Compiled programs
are kept for the process (:func:`compile_once`), keyed by what determines
them (model, optimizer config, devices, input shapes): a notebook or a test
that trains again compiles nothing.

The memory check: what a compiled program needs (XLA's memory analysis)
against what the devices have, with a clear message and the largest
per-device batch that fits, instead of an out-of-memory error after the
first step.

What a device has: on a GPU/TPU its allocator's limit minus what is in use
(``device.memory_stats()``); on the CPU the host's available RAM
(``MemAvailable`` of /proc/meminfo, or the cgroup limit when lower), which
all simulated CPU devices share. ``config.memory_limit_gb`` lowers the
figure (a shared machine, or a test); ``config.check_memory=False`` skips
the check.

What a program needs per device (``jax.stages.Compiled.memory_analysis()``):
its temporaries, its outputs not written into donated arguments, and its
arguments except those already in memory (the replicated train state). XLA
counts the buffers it allocates, not the allocator's fragmentation nor the
runtime's own memory, so the figure is a floor; a program that needs more
than is available would fail for certain.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from typing import Any, Callable, Hashable, Sequence

import jax
import numpy as np

log = logging.getLogger("mrcnn_jax")

GIB = 1024 ** 3
_MAX_PROGRAMS = 32
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()


# ----------------------------------------------------------------------------
# Compiling ahead of time
# ----------------------------------------------------------------------------

def signature(tree) -> tuple:
  """The structure, shapes and dtypes of a pytree (arrays or
  ShapeDtypeStructs): what a compiled program's inputs must match."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return treedef, tuple((tuple(x.shape), np.dtype(x.dtype)) for x in leaves)


def abstract(tree):
  """ShapeDtypeStructs of a pytree's leaves."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype), tree)


def split_over_devices(batch_size: int, field: str) -> tuple[int, int]:
  """(local devices, images per device) of a global batch split over every
  device of every process (``jax.device_count()``); ``field``, the config
  field it came from, names it in the error."""
  n, processes = jax.device_count(), jax.process_count()
  if batch_size % n:
    where = (f"the {n} devices ({processes} processes x {jax.local_device_count()} local "
             "devices)" if processes > 1 else f"the {n} local devices")
    raise ValueError(f"{field}={batch_size} is not divisible by {where}")
  return jax.local_device_count(), batch_size // n


def tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(tree))


def compile_once(key: Hashable, lower: Callable[[], Any]):
  """The compiled program for ``key``: ``lower().compile()`` the first time
  in this process, the same executable afterwards (the newest
  ``_MAX_PROGRAMS`` are kept)."""
  if key in _PROGRAMS:
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key]
  program = lower().compile()
  _PROGRAMS[key] = program
  while len(_PROGRAMS) > _MAX_PROGRAMS:
    _PROGRAMS.popitem(last=False)
  return program


class Program:
  """``fn`` (a ``jax.pmap`` / ``jax.jit`` function) compiled ahead of time
  once per input signature and run as compiled.

  ``key``: everything besides the inputs' shapes that decides the program
  (the model, the optimizer config, the devices), so that equal keys may
  share one executable. ``check(self, compiled, args)`` runs once per
  program before it is first used through this object (see
  :func:`memory_check`).
  """

  def __init__(self, fn, key: Hashable, check: Callable | None = None):
    self._fn, self._key, self._check, self._checked = fn, key, check, set()

  def compiled(self, *args, check: bool = True):
    """The executable for inputs like ``args`` (arrays or
    ShapeDtypeStructs), compiled if needed and checked."""
    key = (self._key, signature(args))
    if jax.process_count() == 1:
      program = compile_once(key, lambda: self._fn.lower(*abstract(args)))
    else:
      # With several processes pmap's ``lower`` turns its (host-local)
      # arguments into global arrays and takes no ShapeDtypeStructs, and
      # its compiled program takes global arrays only: it is compiled here
      # for the memory check, from zeros, and run through pmap itself
      # (:meth:`__call__`), whose own compilation is a hit of the
      # persistent compilation cache where one is set.
      program = compile_once(key, lambda: self._fn.lower(*_concrete(args)))
    if check and self._check is not None and key not in self._checked:
      self._check(self, program, args)
      self._checked.add(key)
    return program

  def __call__(self, *args):
    if jax.process_count() > 1:
      # One pmapped function per key, so pmap's own cache compiles it once
      # in the process (each Program holds a new one).
      return _PMAPPED.setdefault(self._key, self._fn)(*args)
    return self.compiled(*args)(*args)


_PMAPPED: dict = {}


def _concrete(tree):
  """Zeros in place of a pytree's ShapeDtypeStructs (arrays are kept)."""
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype)
                      if isinstance(x, jax.ShapeDtypeStruct) else x, tree)


# ----------------------------------------------------------------------------
# The memory check
# ----------------------------------------------------------------------------


class InsufficientMemoryError(MemoryError):
  """A program needs more memory than its devices have (checked before it
  runs)."""


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
  """Bytes one device's copy of a compiled program uses (XLA's analysis)."""

  temp: int
  arguments: int
  outputs: int
  aliased: int  # outputs written into (donated) argument buffers
  code: int

  @classmethod
  def of(cls, compiled) -> ProgramMemory | None:
    """From a ``jax.stages.Compiled``; None where the backend gives no
    analysis."""
    try:
      m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
      return None
    if m is None:
      return None
    return cls(temp=int(m.temp_size_in_bytes), arguments=int(m.argument_size_in_bytes),
               outputs=int(m.output_size_in_bytes), aliased=int(m.alias_size_in_bytes),
               code=int(m.generated_code_size_in_bytes))

  def needed(self, resident: int = 0) -> int:
    """Bytes to allocate while it runs, ``resident`` argument bytes being in
    memory already."""
    return max(self.arguments - resident, 0) + self.outputs - self.aliased + self.temp + self.code

  def describe(self) -> str:
    return (f"temporaries {gib(self.temp)}, arguments {gib(self.arguments)}, outputs "
            f"{gib(self.outputs)} of which {gib(self.aliased)} reuse donated arguments")


def gib(n: float) -> str:
  return f"{n / GIB:.2f} GiB"


def _read_int(path: str) -> int | None:
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None


def host_available_bytes() -> tuple[int, str]:
  """(bytes, source) of host RAM this process can still take: the lower of
  /proc/meminfo's MemAvailable and the cgroup's limit minus its usage."""
  found = []
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          found.append((int(line.split()[1]) * 1024, "host RAM, MemAvailable"))
  except OSError:
    pass
  if not found:
    try:
      found.append((os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
                    "host RAM, free pages"))
    except (ValueError, OSError, AttributeError):
      pass
  for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                       ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                        "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
    lim, use = _read_int(limit), _read_int(usage)
    if lim is not None and use is not None and lim < (1 << 60):
      found.append((lim - use, "the cgroup's memory limit"))
  if not found:
    return 0, "unknown"
  return min(found)


@dataclasses.dataclass(frozen=True)
class Available:
  """What one device can still allocate. ``shared``: the devices all draw
  on this one figure (CPU devices on host RAM)."""

  bytes: int
  source: str
  shared: bool


def available(devices: Sequence, limit_gb: float | None = None) -> Available | None:
  """What the devices have left, lowered to ``limit_gb`` when given; None
  when it cannot be known (the check is then skipped)."""
  stats = [d.memory_stats() if hasattr(d, "memory_stats") else None for d in devices]
  if all(s and "bytes_limit" in s for s in stats):
    free = min(s["bytes_limit"] - s.get("bytes_in_use", 0) for s in stats)
    result = Available(free, f"{devices[0].platform} memory per device, allocator limit "
                       "minus bytes in use", shared=False)
  elif devices[0].platform == "cpu":
    free, source = host_available_bytes()
    result = Available(free, source, shared=True) if free > 0 else None
  else:
    result = None
  if limit_gb is not None:
    limited = int(float(limit_gb) * GIB)
    if result is None or limited < result.bytes:
      result = Available(limited, f"config.memory_limit_gb={limit_gb}",
                         shared=result.shared if result else devices[0].platform == "cpu")
  return result


def check(what: str, program: ProgramMemory, *, per_device_batch: int, num_devices: int,
          avail: Available, resident: int = 0, host_extra: int = 0,
          at_batch: Callable[[int], ProgramMemory] | None = None,
          batch_flag: str = "--config.batch_size",
          advice: Callable[[int], str] | None = None) -> int:
  """Raises :class:`InsufficientMemoryError` when ``program`` (one
  device's copy, at ``per_device_batch``) does not fit ``avail``; returns
  the bytes it needs per device otherwise.

  ``resident``: argument bytes per device already allocated (the state);
  ``host_extra``: host bytes beside the program when the devices share host
  RAM (input buffers). ``at_batch(b)`` compiles the same program at ``b``
  images per device, to estimate the largest batch that fits (called only
  when it does not fit).
  """
  copies = num_devices if avail.shared else 1

  def total(p: ProgramMemory) -> int:
    return copies * p.needed(resident) + (host_extra if avail.shared else 0)

  need = total(program)
  if need <= avail.bytes:
    return program.needed(resident)
  where = (f"{num_devices} {'devices share' if num_devices > 1 else 'device uses'} it: "
           f"{gib(need)} in all" + (f" with {gib(host_extra)} of input buffers"
                                    if avail.shared and host_extra else "")
           if avail.shared else "per device")
  lines = [f"not enough memory for {what}: it needs {gib(program.needed(resident))} per device "
           f"at {per_device_batch} image(s) per device ({program.describe()}; XLA's memory "
           f"analysis of the compiled program), {where}; available: {gib(avail.bytes)} "
           f"({avail.source})."]
  fits = 0
  if per_device_batch > 1 and at_batch is not None:
    one = total(at_batch(1))
    per_image = (need - one) / (per_device_batch - 1)
    if one <= avail.bytes:
      fits = min(per_device_batch - 1, 1 + int((avail.bytes - one) // max(per_image, 1)))
    lines.append(f"At 1 image per device it needs {gib(one)} in all, each further image about "
                 f"{gib(per_image)}.")
  if fits:
    lines.append(f"The largest per-device batch that fits is about {fits}: "
                 f"{batch_flag}={fits * num_devices} on {num_devices} device(s)"
                 f"{advice(fits * num_devices) if advice else ''}.")
  else:
    lines.append("Not even one image per device fits: use a smaller canvas "
                 "(config.data.canvas / canvases, min_size, max_size), a smaller model, "
                 "or a device with more memory.")
  lines.append("This was checked before the first step; --config.check_memory=False skips "
               "the check.")
  raise InsufficientMemoryError(" ".join(lines))


def with_batch(tree, per_device_batch: int):
  """ShapeDtypeStructs of a ``[devices, per-device batch, ...]`` tree at
  another per-device batch."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      (x.shape[0], per_device_batch) + tuple(x.shape[2:]), x.dtype), tree)


def memory_check(config, devices, *, what: str, per_device_batch: int, resident: int,
                 host_extra: int, rebatch: Callable, canvas: Callable,
                 batch_flag: str, advice: Callable[[int], str] | None = None):
  """A ``check`` for :class:`Program`: before a program first runs, raises
  :class:`InsufficientMemoryError` (with the largest per-device batch that
  fits, estimated by compiling the program at 1 image per device) when it
  does not fit; logs what it needs otherwise. None when
  ``config.check_memory`` is off or the devices' memory cannot be known.

  ``rebatch(args, b)``: the program's arguments at ``b`` images per device;
  ``canvas(args)``: the (H, W) of their images; the rest as :func:`check`.
  """
  if not config.get("check_memory", True):
    return None
  avail = available(devices, config.get("memory_limit_gb"))
  if avail is None:
    log.info("memory check skipped: %s devices report no memory figures", devices[0].platform)
    return None

  def run_check(program_obj, compiled, args):
    need = ProgramMemory.of(compiled)
    if need is None:
      log.info("memory check skipped for %s: no memory analysis on %s", what,
               devices[0].platform)
      return
    where = f"{what} on canvas {'x'.join(str(int(d)) for d in canvas(args))}"
    at_batch = lambda b: ProgramMemory.of(
        program_obj.compiled(*rebatch(args, b), check=False))
    per_device = check(where, need, per_device_batch=per_device_batch,
                       num_devices=len(devices), avail=avail, resident=resident,
                       host_extra=host_extra, at_batch=at_batch, batch_flag=batch_flag,
                       advice=advice)
    log.info("memory: %s needs %s per device (%s); available %s (%s)", where,
             gib(per_device), need.describe(), gib(avail.bytes), avail.source)
  return run_check


def replicate(tree, devices=None):
  """Copies ``tree`` to every local device, laid out as the pmapped step
  returns its outputs (a ``NamedSharding`` over a mesh of ``devices`` with
  the axis ``'batch'``, the ``axis_name`` of the train and evaluation
  pmaps), so the second step does not compile again.

  Each leaf goes through the host: ``flax.jax_utils.replicate`` stacks the
  copies with ``jnp.stack``, one XLA compilation per distinct leaf shape
  (about 60 of them, 4 s of a CPU run's start for the shapes model, again
  for the evaluation's variables); a host copy and a ``device_put`` compile
  nothing."""
  devices = list(devices) if devices is not None else jax.local_devices()
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), ("batch",)),
                                        jax.sharding.PartitionSpec("batch"))

  def put(x):
    x = np.asarray(x)
    return jax.device_put(np.stack([x] * len(devices)), sharding)

  return jax.tree.map(put, tree)
