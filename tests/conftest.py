"""Test setup: several CPU devices for the sharding tests, and the reference
fixtures made by scripts/make_reference_fixtures.py (torchvision's outputs)."""

import os

# Must be set before JAX initialises its backend; added to any XLA_FLAGS the
# caller set rather than replaced by them.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=2".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="session")
def tv_ref():
  """torchvision's outputs for the ops (see scripts/make_reference_fixtures.py)."""
  return dict(np.load(os.path.join(DATA, "torchvision_reference.npz")))
