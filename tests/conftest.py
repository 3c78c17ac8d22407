"""Test setup: several CPU devices for the sharding tests, and the reference
fixtures made by scripts/make_reference_fixtures.py (torchvision's outputs)."""

import os

# Must be set before JAX initialises its backend; added to any XLA_FLAGS the
# caller set rather than replaced by them.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags = f"{_flags} --xla_force_host_platform_device_count=2".strip()
# The suite is bound by XLA:CPU compilation of many small programs, not by
# running them: LLVM's optimisation level 0 compiles them much faster (on the
# 2-core CI-sized machine, 2026-11-29: tests/test_ablation_switches.py 82 ->
# 49 s, test_model.py + test_train.py 368 -> 264 s, and the CLI tests that
# train in subprocesses, which inherit the flag, 339 -> 252 s), with every
# check passing at either level. A caller's own level wins.
if "xla_backend_optimization_level" not in _flags:
  _flags = f"{_flags} --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One persistent XLA compilation cache for the whole session, subprocesses
# included (they inherit the environment): many tests compile the same tiny
# train or inference step, and XLA:CPU takes 10-30 s per compilation where a
# cache hit takes under a second. A fresh directory per session, so nothing
# carries over from an earlier run or another checkout.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  _cache = tempfile.mkdtemp(prefix="mrcnn_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="session")
def tv_ref():
  """torchvision's outputs for the ops (see scripts/make_reference_fixtures.py)."""
  return dict(np.load(os.path.join(DATA, "torchvision_reference.npz")))
