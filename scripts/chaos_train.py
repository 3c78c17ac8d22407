"""Kill -9 the shapes trainer at random moments, restart it each time, and
check that the run it finishes is bit for bit the uninterrupted run.

  python scripts/chaos_train.py                       # 10 kills, shapes, 150 steps
  python scripts/chaos_train.py --kills 10 --total-steps 150 --checkpoint-every 10 \\
      --workdir /tmp/chaos --out chaos.json [-- --config.KEY=VALUE ...]

1. An uninterrupted reference run: ``mrcnn-jax train --no-eval`` with
   ``--config.total_steps``, ``--config.checkpoint_every``, every checkpoint
   kept and a TensorBoard event per step (``log_every=1``, so the steps
   reached are known to the step).
2. The same command in a second workdir, sent SIGKILL ``--kills`` times, each
   at a random moment ``U(startup / 2, startup + training time / kills)``
   after it started, with the startup (time to the first step: compiling,
   restoring) and the training time measured on the reference run, so kills
   fall during start-up, steps and checkpoint writes alike, and the kills
   together take about half the run (the last start runs to the end). After
   each kill it is started again. ``--reuse-reference`` keeps a reference run
   of the same command finished earlier in ``--workdir`` (its timings are
   saved beside it) instead of training it again.
3. Per kill: the last step finished before the kill (from its event file),
   the newest checkpoint it left, the step the next start resumed from (its
   log; none when that start was killed before restoring), and the steps
   lost (finished minus checkpointed). Then the SHA-256 digest of the whole train state (parameters,
   optimizer state, step) that every checkpoint carries is compared between
   the two runs at every step both kept: equal digests mean bit-identical
   states.

Extra arguments after ``--`` go to both runs (e.g. ``--config.data.canvases``);
``--devices N`` simulates N CPU devices (``XLA_FLAGS``). Prints a table and one
JSON line (also written to ``--out``); exits 1 when the final states differ.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's mrcnn_jax, not an installed one


def parse_args(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--kills", type=int, default=10)
  p.add_argument("--total-steps", type=int, default=150)
  p.add_argument("--checkpoint-every", type=int, default=10)
  p.add_argument("--config", default=None, help="default: experiments/shapes.py")
  p.add_argument("--devices", type=int, default=None, help="simulated CPU devices")
  p.add_argument("--workdir", default="/tmp/chaos_train")
  p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
  p.add_argument("--out", default=None, help="also write the JSON result here")
  p.add_argument("--reuse-reference", action="store_true",
                 help="keep a finished reference run of the same command in --workdir")
  args = p.parse_args(argv)
  args.extra = extra
  return args


def train_command(args, workdir):
  cmd = [sys.executable, "-m", "mrcnn_jax.cli", "train", "--workdir", workdir, "--no-eval",
         f"--config.total_steps={args.total_steps}",
         f"--config.checkpoint_every={args.checkpoint_every}",
         "--config.keep_checkpoints=100000", "--config.log_every=1"]
  if args.config:
    cmd[4:4] = ["--config", args.config]
  return cmd + args.extra


def child_env(args):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  if args.devices:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={args.devices}").strip()
  return env


def event_files(workdir) -> set[str]:
  return set(glob.glob(os.path.join(workdir, "events.out.tfevents*")))


def steps_logged(workdir, skip=frozenset()) -> int:
  """The last step whose metrics reached the event files not in ``skip``
  (0 if none)."""
  from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
  last = 0
  for path in event_files(workdir) - set(skip):
    try:
      for event in LegacyEventFileLoader(path).Load():
        if event.HasField("summary"):
          last = max(last, int(event.step))
    except Exception:  # noqa: BLE001 -- a record cut off by the kill
      pass
  return last


def resumed_step(log_path) -> int:
  with open(log_path, errors="replace") as f:
    text = f.read()
  m = re.search(r"resumed from \S+ at step (\d+)", text)
  return int(m.group(1)) if m else 0


def run(cmd, env, log_path, kill_after=None, watch=None):
  """Runs ``cmd`` (output to ``log_path``); SIGKILLs it ``kill_after``
  seconds after the start. Returns (seconds, return code, first step's time)."""
  t0 = time.time()
  first = None
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    while proc.poll() is None:
      time.sleep(0.2)
      if watch and first is None and steps_logged(watch) >= 1:
        first = time.time() - t0
      if kill_after is not None and time.time() - t0 >= kill_after:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        break
  return time.time() - t0, proc.returncode, first


def main(argv=None):
  args = parse_args(argv)
  from mrcnn_jax import checkpoints  # noqa: E402 (after arguments are checked)
  env = child_env(args)
  ref, chaos = os.path.join(args.workdir, "reference"), os.path.join(args.workdir, "chaos")
  timing_path = os.path.join(args.workdir, "reference.json")
  cmd = train_command(args, ref)
  previous = None
  if args.reuse_reference and os.path.exists(timing_path):
    with open(timing_path) as f:
      previous = json.load(f)
    if previous.get("cmd") != cmd or args.total_steps not in checkpoints.train_steps(ref):
      print("--reuse-reference: the reference in --workdir is of another command or "
            "unfinished; training it again", flush=True)
      previous = None
  for d in (chaos,) if previous else (ref, chaos):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
  rng = random.Random(args.seed)

  if previous:
    wall, startup = previous["wall_s"], previous["startup_s"]
    print(f"reference run reused: {' '.join(cmd)}", flush=True)
  else:
    print(f"reference run: {' '.join(cmd)}", flush=True)
    wall, rc, startup = run(cmd, env, os.path.join(args.workdir, "ref.log"), watch=ref)
    if rc != 0:
      raise SystemExit(f"the reference run failed (rc {rc}); see {args.workdir}/ref.log")
    with open(timing_path, "w") as f:
      json.dump({"cmd": cmd, "wall_s": wall, "startup_s": startup or 0.0}, f)
  startup = startup or 0.0
  training = max(wall - startup, 1.0)
  print(f"reference: {wall:.0f} s ({startup:.0f} s to the first step)", flush=True)

  kills = []
  latest = lambda: (checkpoints.train_steps(chaos) or [0])[-1]
  for i in range(args.kills + 1):
    log_path = os.path.join(args.workdir, f"chaos_{i:02d}.log")
    delay = None if i == args.kills else rng.uniform(startup / 2,
                                                      startup + training / args.kills)
    old_events, start_step = event_files(chaos), latest()
    seconds, rc, _ = run(train_command(args, chaos), env, log_path, kill_after=delay)
    if i and "training on" in open(log_path, errors="replace").read():
      # the step this start resumed from, as it logged it (damaged newer
      # checkpoints would make it older than the newest on disk)
      kills[-1]["resumed_from"] = resumed_step(log_path)
    if delay is None:
      if rc != 0:
        raise SystemExit(f"the last chaos run failed (rc {rc}); see {log_path}")
      break
    if rc != -signal.SIGKILL:
      print(f"run {i} ended (rc {rc}) before its kill at {delay:.0f} s", flush=True)
    # the last step finished before the kill, and the newest checkpoint left
    reached = max(steps_logged(chaos, skip=old_events), start_step)
    kept = latest()
    kills.append({"kill": i + 1, "killed": rc == -signal.SIGKILL,
                  "after_s": round(seconds, 1), "reached": reached,
                  "checkpoint_left": kept, "steps_lost": reached - kept,
                  "resumed_from": None})
    print(f"kill {i + 1}: after {seconds:.0f} s at step {reached}, newest checkpoint {kept}",
          flush=True)

  want = {s: checkpoints.read_train_meta(ref, s)["state_sha256"]
          for s in checkpoints.train_steps(ref)}
  got = {s: checkpoints.read_train_meta(chaos, s)["state_sha256"]
         for s in checkpoints.train_steps(chaos)}
  common = sorted(set(want) & set(got))
  differ = [s for s in common if want[s] != got[s]]
  final_equal = args.total_steps in got and got[args.total_steps] == want[args.total_steps]
  damaged = sorted(os.listdir(os.path.join(chaos, "damaged_checkpoints"))) if os.path.isdir(
      os.path.join(chaos, "damaged_checkpoints")) else []

  print(f"\n{'kill':>4} {'after s':>8} {'reached':>8} {'checkpoint':>10} {'resumed':>8} "
        f"{'lost':>5}")
  for k in kills:
    print(f"{k['kill']:>4} {k['after_s']:>8} {k['reached']:>8} {k['checkpoint_left']:>10} "
          f"{str(k['resumed_from']):>8} {k['steps_lost']:>5}")
  lost = [k["steps_lost"] for k in kills if k["killed"]] or [0]
  print(f"{sum(k['killed'] for k in kills)} of {len(kills)} starts killed (the others "
        f"ended before their kill); steps lost per kill: mean {sum(lost) / len(lost):.1f}, "
        f"max {max(lost)} (checkpoint every {args.checkpoint_every})")
  print(f"checkpoints compared: {len(common)}, differing: {differ or 'none'}; final state "
        f"(step {args.total_steps}) {'EQUAL' if final_equal else 'DIFFERENT'} to the "
        "uninterrupted run's")
  result = {"kills": kills, "total_steps": args.total_steps,
            "checkpoint_every": args.checkpoint_every, "reference_s": round(wall, 1),
            "reference_startup_s": round(startup, 1), "reference_reused": bool(previous),
            "checkpoints_compared": len(common),
            "checkpoints_differing": differ, "final_equal": final_equal,
            "damaged_checkpoints": damaged, "extra": args.extra, "devices": args.devices}
  line = json.dumps(result)
  print(line)
  if args.out:
    with open(args.out, "w") as f:
      f.write(line + "\n")
  return 0 if final_equal and not differ else 1


if __name__ == "__main__":
  sys.exit(main())
