"""Starts N processes of one mrcnn_jax job on this machine, the way N hosts
would run it (``jax.distributed``; README, "Several processes / hosts"):

  python scripts/launch_local.py --num_processes 2 --devices_per_process 2 -- \
      train --config experiments/shapes_tiny.py --workdir /tmp/mh

Each process gets ``--coordinator_address 127.0.0.1:PORT --num_processes N
--process_id I`` (a free port), its own ``--devices_per_process`` simulated
CPU devices (``XLA_FLAGS``) and ``JAX_PLATFORMS=cpu``. A command starting
with ``train`` / ``evaluate`` / ... runs ``python -m mrcnn_jax.cli``; any
other command (e.g. ``python my_script.py``) runs as given, with the same
three flags appended. Output lines are prefixed with ``[I]``. Exits with the
first non-zero status of any process; when one fails, the others are
stopped after ``--grace`` seconds (they would wait for it in their next
collective).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time

CLI_COMMANDS = ("train", "evaluate", "predict", "convert", "export")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(devices: int, base=None) -> dict:
  """``base`` (default: this environment) with ``devices`` CPU devices and
  the CPU platform."""
  env = dict(os.environ if base is None else base)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("PYTHONUNBUFFERED", "1")
  return env


def commands(command: list[str], num_processes: int, port: int) -> list[list[str]]:
  if command and command[0] in CLI_COMMANDS:
    command = [sys.executable, "-m", "mrcnn_jax.cli"] + command
  return [command + ["--coordinator_address", f"127.0.0.1:{port}",
                     "--num_processes", str(num_processes), "--process_id", str(i)]
          for i in range(num_processes)]


def _stream(i: int, pipe, out) -> None:
  for line in iter(pipe.readline, ""):
    out.write(f"[{i}] {line}")
    out.flush()


def launch(command: list[str], num_processes: int, devices_per_process: int,
           port: int | None = None, grace: float = 10.0, env=None, out=None,
           timeout: float | None = None) -> list[int]:
  """Runs the processes to the end; returns their exit statuses (a process
  stopped by the launcher, after another failed or ``timeout`` passed, has
  a negative one)."""
  out = sys.stdout if out is None else out
  port = free_port() if port is None else port
  procs, threads = [], []
  for i, cmd in enumerate(commands(command, num_processes, port)):
    p = subprocess.Popen(cmd, env=process_env(devices_per_process, env), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t = threading.Thread(target=_stream, args=(i, p.stdout, out), daemon=True)
    t.start()
    procs.append(p)
    threads.append(t)
  start, failed_at = time.monotonic(), None
  while any(p.poll() is None for p in procs):
    now = time.monotonic()
    if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
      failed_at = now
    if (failed_at is not None and now - failed_at > grace) or (
        timeout is not None and now - start > timeout):
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.1)
  for t in threads:
    t.join(timeout=5)
  return [p.returncode for p in procs]


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    raise SystemExit("usage: launch_local.py [--num_processes N] [--devices_per_process D] "
                     "-- COMMAND ...")
  split = argv.index("--")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--port", type=int, default=None, help="default: a free one")
  parser.add_argument("--grace", type=float, default=10.0,
                      help="seconds the others may run on after one failed")
  args = parser.parse_args(argv[:split])
  codes = launch(argv[split + 1:], args.num_processes, args.devices_per_process, args.port,
                 args.grace)
  bad = [(i, c) for i, c in enumerate(codes) if c != 0]
  for i, c in bad:
    print(f"launch_local: process {i} exited with status {c}", file=sys.stderr)
  sys.exit(next((c if c > 0 else 1 for _, c in bad), 0))


if __name__ == "__main__":
  main()
