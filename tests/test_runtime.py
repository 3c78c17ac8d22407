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


@pytest.mark.parametrize("environ,glibc,thp,expected", [
    ({}, (2, 36), "madvise", "glibc.malloc.hugetlb=1"),
    ({}, (2, 35), "always", "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "madvise",
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", None),  # the user's
    ({"MRCNN_JAX_HUGEPAGES": "0"}, (2, 36), "madvise", None),
    ({}, (2, 34), "madvise", None),  # the tunable is newer
    ({}, None, "madvise", None),  # musl, macOS
    ({}, (2, 36), "never", None),
    ({}, (2, 36), None, None),
])
def test_huge_page_malloc_env(environ, glibc, thp, expected):
  env = runtime.huge_page_malloc_env(dict(environ, PATH="/bin"), glibc=glibc, thp_mode=thp)
  if expected is None:
    assert env is None
  else:
    assert env["GLIBC_TUNABLES"] == expected and env["PATH"] == "/bin"


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert runtime._thp_mode(str(f)) == "madvise"
  assert runtime._thp_mode(str(tmp_path / "missing")) is None


REEXEC = """
import os, sys
from mrcnn_jax import runtime
print("before", os.environ.get("GLIBC_TUNABLES"), flush=True)
runtime.reexec_with_huge_page_malloc(["-c", "import os; print('after', os.environ['GLIBC_TUNABLES'])"])
print("not replaced")
"""


def test_reexec_starts_again_with_the_tunable_once():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MRCNN_JAX_HUGEPAGES")}
  out = subprocess.run([sys.executable, "-c", REEXEC], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.split("\n")
  will = runtime.huge_page_malloc_env(env, glibc=runtime._glibc_version(),
                                      thp_mode=runtime._thp_mode())
  if will is None:  # this machine: nothing to gain, so no second start
    assert out[:2] == ["before None", "not replaced"]
  else:
    assert out[:2] == ["before None", "after glibc.malloc.hugetlb=1"]
  env["MRCNN_JAX_HUGEPAGES"] = "0"
  out = subprocess.run([sys.executable, "-c", REEXEC], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.split("\n")
  assert out[:2] == ["before None", "not replaced"]
