"""Seeded fuzzing in CI (the harness is tests/fuzz_inputs.py): random byte
corruptions and value edits of a small COCO json, of small .pth checkpoints
(zip format, the zip's pickle with valid CRCs, legacy format) and of small
PNG / JPEG files always end in the documented ValueError naming the file, or
in a result the oracle accepts; never another exception, a hang, a crash or a
wrong result that passes silently. Each target runs in its own process (a
segfault or a C-level hang ends that process, not pytest) under a 2 GB
address-space limit, with a per-case alarm."""

import json
import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fuzz_inputs  # noqa: E402

# target -> (cases, outcome kinds that must occur: the mutations get past the
# first parse and some come back valid)
TARGETS = {
    "json": (500, ("ok", "error:ValueError")),
    "pth_zip": (500, ("ok:identical", "error:ValueError")),
    "pth_pickle": (400, ("ok", "error:ValueError", "error:UnsafeCheckpointError")),
    "pth_legacy": (400, ("ok", "error:ValueError", "error:UnsafeCheckpointError")),
    "png": (300, ("ok:identical", "error:ValueError")),
    "jpeg": (300, ("ok", "error:ValueError")),
}


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz(target):
  cases, expected_kinds = TARGETS[target]
  root = os.path.dirname(HERE)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (root, os.environ.get("PYTHONPATH")) if p))
  try:
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "fuzz_inputs.py"), target, "--cases", str(cases),
         "--seed", "0", "--case-seconds", "2"],
        capture_output=True, text=True, cwd=root, env=env, timeout=120)
  except subprocess.TimeoutExpired as e:
    last = [l for l in (e.stdout or b"").decode().splitlines() if l.startswith("CASE")][-1:]
    pytest.fail(f"fuzzing {target} hung; last case started: {last}")
  lines = result.stdout.splitlines()
  failures = [l for l in lines if l.startswith("FAIL")]
  last_case = [l for l in lines if l.startswith("CASE")][-1:]
  assert result.returncode == 0, (
      f"exit {result.returncode} (a negative code is a signal: crash); last case started: "
      f"{last_case}; failures: {failures[:10]}; stderr: {result.stderr[-2000:]}")
  summary = next(l for l in lines if l.startswith(f"SUMMARY {target} "))
  counts = json.loads(summary.split(" ", 2)[2].rsplit(" ", 1)[0])
  assert sum(counts.values()) == cases
  for kind in expected_kinds:
    assert counts.get(kind, 0) > 0, (kind, counts)


def test_the_harness_reports_what_it_must(tmp_path):
  """A reader that raises another type, an error that does not name the
  file, a wrong result and a slow case are each a FAIL line."""
  def wrong_type(path):
    raise KeyError("images")

  def unnamed(path):
    raise ValueError("bad file")

  def wrong(path):
    raise AssertionError("annotations neither kept nor counted")

  def slow(path):
    time.sleep(5)

  for check, kind in [(wrong_type, "crash:KeyError"), (unnamed, "error:ValueError"),
                      (wrong, "wrong"), (slow, "timeout")]:
    with open(tmp_path / "log", "w") as out:
      counts, failures = fuzz_inputs.run("json", 2, 0, 0.2, out=out, check=check)
    assert counts == {kind: 2} and len(failures) == 2, (kind, counts)
  with open(tmp_path / "log", "w") as out:
    counts, failures = fuzz_inputs.run("json", 5, 0, 2.0, out=out)
  assert not failures and sum(counts.values()) == 5
