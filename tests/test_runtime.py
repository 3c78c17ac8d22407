"""runtime: how many CPU devices a run splits its batches over."""

import json
import os
import subprocess
import sys

import pytest

from mrcnn_jax import runtime


@pytest.mark.parametrize("sizes,cores,expected", [
    ([8, 8], 2, 2), ([8], 16, 8), ([6], 4, 3), ([5, 10], 2, 1), ([16, 8], 16, 8), ([4], 1, 1),
])
def test_cpu_device_count_divides_every_batch(sizes, cores, expected):
  assert runtime.cpu_device_count(sizes, cores) == expected


SCRIPT = """
import json, sys
import ml_collections, jax
from mrcnn_jax import runtime
c = ml_collections.ConfigDict(dict(batch_size=6, eval_batch_size=3, cpu_devices=int(sys.argv[1])))
if sys.argv[2] == "late":
  jax.numpy.zeros(1).block_until_ready()  # JAX already running: left alone
got = runtime.configure_cpu_devices(c)
print(json.dumps([got, jax.local_device_count(), runtime.usable_cores()]))
"""


def _run(cpu_devices, when="early"):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", SCRIPT, str(cpu_devices), when], env=env,
                       capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_configure_sets_the_device_count_before_jax_starts():
  got, devices, cores = _run(0)
  assert got == devices == runtime.cpu_device_count([6, 3], cores)
  assert _run(3)[:2] == [3, 3]
  got, devices, _ = _run(3, "late")
  assert got is None and devices == 1


def test_negative_count_is_refused():
  import ml_collections
  with pytest.raises(ValueError, match="cpu_devices"):
    runtime.configure_cpu_devices(ml_collections.ConfigDict(dict(batch_size=2, cpu_devices=-1)))
