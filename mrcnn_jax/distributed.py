"""Several processes (hosts) through JAX's multi-controller runtime
(``jax.distributed``): start-up, and the few agreements the trainer needs.

Each process runs the same program on its own (local) devices; the pmapped
train step's ``lax.pmean`` then averages over every device of every
process. :func:`initialize` has to run before anything touches JAX's
devices. Three cases:

* ``coordinator_address``, ``num_processes`` and ``process_id`` given (the
  names of ``jax.distributed.initialize``'s arguments): that runtime;
* none of them, in a cluster environment JAX recognises by itself (a SLURM
  job step of several tasks, Open MPI, a TPU pod slice):
  ``jax.distributed.initialize()`` without arguments, which reads it;
* neither: nothing happens and the run is single-process, exactly as before.

On CPU the collectives between processes go through gloo
(``jax_cpu_collectives_implementation``); the setting only concerns JAX's
CPU backend, so it is set whenever there is more than one process (a GPU or
TPU run keeps NCCL / ICI for its accelerators).

No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time

import numpy as np

log = logging.getLogger("mrcnn_jax")

# Environment variables by which JAX's own cluster detection recognises a job
# of several processes (SLURM, Open MPI, a TPU pod slice): name -> what makes
# it a job of more than one process.
_CLUSTER_ENVS = {
    "SLURM": lambda env: "SLURM_JOB_ID" in env and int(
        env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1) > 1,
    "Open MPI": lambda env: int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1,
    "TPU pod": lambda env: len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",")
                                if h]) > 1,
}


def cluster_environment(env=None) -> str | None:
  """The name of the multi-process cluster environment this process runs
  in (one JAX detects by itself), or None."""
  env = os.environ if env is None else env
  for name, present in _CLUSTER_ENVS.items():
    try:
      if present(env):
        return name
    except ValueError:  # a malformed count: not a cluster we can trust
      continue
  return None


def _wait_for_coordinator(address: str, timeout_s: float, process_id: int,
                          num_processes: int) -> None:
  """Returns once ``address`` accepts a TCP connection; raises
  ConnectionError, naming it, after ``timeout_s`` (JAX's runtime would
  abort the process instead of raising)."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"--coordinator_address {address!r} is not of the form HOST:PORT")
  deadline = time.monotonic() + timeout_s
  last = None
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
        return
    except OSError as e:
      last = e
    if time.monotonic() >= deadline:
      raise ConnectionError(
          f"process {process_id} of {num_processes}: the coordinator {address} cannot be "
          f"reached within {timeout_s:g} s ({last}); start process 0 on that host and port, "
          "or fix --coordinator_address (or raise --distributed_timeout)")
    time.sleep(0.2)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: float = 300.0) -> bool:
  """Starts JAX's distributed runtime when asked to (the three arguments)
  or when a cluster environment says so; returns whether it did. Call it
  before JAX's first computation. ``timeout_s``: how long to wait for the
  coordinator and the other processes."""
  import jax
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  missing = [k for k, v in given.items() if v is None]
  if missing and len(missing) < len(given):
    raise ValueError(f"several processes need --coordinator_address, --num_processes and "
                     f"--process_id together; missing {', '.join(missing)}")
  if not missing:
    num_processes, process_id = int(num_processes), int(process_id)
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must lie in [0, --num_processes="
                       f"{num_processes})")
    if num_processes == 1:
      return False
    start = time.monotonic()
    if process_id != 0:  # process 0 starts the coordinator itself
      _wait_for_coordinator(coordinator_address, timeout_s, process_id, num_processes)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    remaining = max(1, int(timeout_s - (time.monotonic() - start)))
    log.info("process %d of %d: joining %s (waiting up to %d s for all processes)",
             process_id, num_processes, coordinator_address, remaining)
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=remaining)
    return True
  cluster = cluster_environment()
  if cluster is None:
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  log.info("%s environment of several processes: jax.distributed.initialize()", cluster)
  jax.distributed.initialize(initialization_timeout=int(timeout_s))
  return True


def process_index() -> int:
  import jax
  return jax.process_index()


def process_count() -> int:
  import jax
  return jax.process_count()


def process_shard() -> tuple[int, int]:
  """(this process's index, number of processes): its share of the input."""
  return process_index(), process_count()


def is_primary() -> bool:
  """Whether this process writes logs, TensorBoard, samples and metrics."""
  return process_index() == 0


_BARRIERS = {}


def barrier(name: str, timeout_s: float = 3600.0) -> None:
  """Waits until every process has reached the barrier ``name`` (at most
  ``timeout_s``). It goes through the coordination service (orbax's
  ``sync_global_processes``), not a collective: gloo gives up on a peer
  that comes tens of seconds late, so every collective that may follow a long wait
  (a slower process, process 0 running pycocotools) is preceded by one."""
  if process_count() == 1:
    return
  from orbax.checkpoint import multihost
  n = _BARRIERS[name] = _BARRIERS.get(name, 0) + 1  # orbax wants unique names
  multihost.sync_global_processes(f"mrcnn_jax:{name}:{n}", timeout=int(timeout_s))


def allgather_bytes(data: bytes, size: int = 4096) -> list[bytes]:
  """``data`` (at most ``size`` bytes) of every process, by process index."""
  if process_count() == 1:
    return [data]
  if len(data) > size:
    raise ValueError(f"allgather_bytes: {len(data)} bytes, more than {size}")
  from jax.experimental import multihost_utils
  barrier("allgather")
  buf = np.zeros(size + 4, np.uint8)
  buf[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), np.uint8)
  buf[4:4 + len(data)] = np.frombuffer(data, np.uint8)
  out = np.asarray(multihost_utils.process_allgather(buf))
  return [bytes(row[4:4 + int(np.frombuffer(row[:4].tobytes(), np.uint32)[0])]) for row in out]


def agree(text: str, what: str) -> None:
  """Raises ValueError in every process unless all processes hold the same
  ``text`` (e.g. the config as JSON); the message names the processes that
  differ from process 0."""
  digest = hashlib.sha256(text.encode()).hexdigest()[:32].encode()
  digests = allgather_bytes(digest, 32)
  differ = [i for i, d in enumerate(digests) if d != digests[0]]
  if differ:
    raise ValueError(f"{what} differs between processes: process(es) {differ} hold another "
                     f"one than process 0 (give every process the same --config and "
                     "--config.* overrides)")


_ANY = {}


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is set in any process (a tiny psum over all devices;
  every process must call it at the same point)."""
  import jax
  if process_count() == 1:
    return bool(flag)
  if "fn" not in _ANY:
    _ANY["fn"] = jax.pmap(lambda x: jax.lax.psum(x, "p"), axis_name="p")
  x = np.zeros(jax.local_device_count(), np.int32)
  x[0] = int(bool(flag))
  return bool(np.asarray(_ANY["fn"](x))[0] > 0)
