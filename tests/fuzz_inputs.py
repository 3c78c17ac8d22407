"""Seeded fuzzing of the file readers a user feeds untrusted bytes to: the
COCO-format json checks (mrcnn_jax/data/coco_json.py), the PyTorch
checkpoint reader (mrcnn_jax/torch_io.py) and the image reader of predict
(mrcnn_jax/image_io.py). Run by tests/test_fuzz_inputs.py in a subprocess
per target (so a segfault or a hang in C code is caught too), or by hand:

  PYTHONPATH=. python tests/fuzz_inputs.py json --cases 300 --seed 0
  PYTHONPATH=. python tests/fuzz_inputs.py pth_zip pth_pickle pth_legacy png jpeg

Each case mutates a small valid file with a seeded generator (byte flips,
insertions, deletions, truncation; for the json also value edits of the
parsed document, which reach the checks past the parser) and reads it. The
outcome must be one of

* a ``ValueError`` (or subclass) whose message names the file: the documented
  error of these readers (README, "Bad input");
* a result that passes the target's oracle: for the json, every annotation is
  either an object or counted as skipped, every object's mask decodes at the
  image's size and its id, category and clipped box are the json's; for a zip
  checkpoint (CRC-32 on every record) and a PNG (CRC-32 on every chunk)
  exactly the original, bit for bit; for the pickle and legacy checkpoint
  targets and JPEG (whose bytes carry no checksum, so a changed byte can
  change a value undetectably) a well-formed result whose every array can be
  read in full.

Anything else (another exception type, a message without the path, a case
slower than ``--case-seconds``, a wrong result) is printed as ``FAIL`` with
its seed and the process exits 1; a crash or hang ends the process, and the
last ``CASE`` line printed names the case. The process runs under an
address-space limit (``--memory-gb``), so a runaway allocation is a
MemoryError finding rather than the machine's memory. The summary line counts
outcomes by kind so the caller can check the cases reached past the first
parse.
"""

from __future__ import annotations

import argparse
import collections
import copy
import io
import json
import os
import random
import signal
import sys
import tempfile
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")


class CaseTimeout(Exception):
  pass


def _alarm(signum, frame):
  raise CaseTimeout()


# ------------------------------------------------------------------------------
# Mutations.
# ------------------------------------------------------------------------------

INTERESTING_BYTES = b'"{}[],:0-9e.\\\x00\xffnNtI '


def mutate_bytes(data: bytes, rng: random.Random, *, protect: int = 0) -> bytes:
  """1-3 random byte-level edits (flip, set, insert, delete, duplicate,
  truncate) anywhere after the first `protect` bytes."""
  out = bytearray(data)
  for _ in range(rng.choice((1, 1, 1, 2, 3))):
    if len(out) <= protect + 1:
      break
    op = rng.randrange(7)
    i = rng.randrange(protect, len(out))
    if op == 0:
      out[i] ^= 1 << rng.randrange(8)
    elif op == 1:
      out[i] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.6 else rng.randrange(256)
    elif op == 2:
      out[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif op == 3:
      del out[i:i + rng.randint(1, 16)]
    elif op == 4:
      j = rng.randrange(protect, len(out))
      out[i:i] = out[j:j + rng.randint(1, 32)]
    elif op == 5:
      del out[i:]
    else:
      j = min(len(out), i + rng.randint(1, 4))
      out[i:j] = bytes(rng.randrange(256) for _ in range(j - i))
  return bytes(out)


INTERESTING_VALUES = [0, -1, 1, 2, 3, 2**31, 2**63, 2**64, -2**63 - 1, 1e308, -1e308, 1e9,
                      0.5, float("nan"), float("inf"), "", "x", True, False, None, [], {},
                      [0, 0], [1e9, 0, 1e9, 1e9, 0, 1e9], [[0, 0, 1, 0, 1, 1]]]


def _paths(node, prefix=()):
  yield prefix
  if isinstance(node, dict):
    for k, v in node.items():
      yield from _paths(v, prefix + (k,))
  elif isinstance(node, list):
    for i, v in enumerate(node):
      yield from _paths(v, prefix + (i,))


def mutate_json_value(data: dict, rng: random.Random) -> dict:
  """1-2 structure-aware edits: a value replaced by an interesting one (or a
  copy of another node), a key deleted, a list element duplicated."""
  data = copy.deepcopy(data)
  for _ in range(rng.choice((1, 1, 2))):
    paths = [p for p in _paths(data) if p]
    path = rng.choice(paths)
    parent = data
    for k in path[:-1]:
      parent = parent[k]
    leaf = path[-1]
    op = rng.randrange(4)
    if op == 0:
      parent[leaf] = copy.deepcopy(rng.choice(INTERESTING_VALUES))
    elif op == 1:
      parent[leaf] = copy.deepcopy(_get(data, rng.choice(paths)))
    elif op == 2:
      del parent[leaf]
    elif isinstance(parent, list):
      parent.insert(leaf, copy.deepcopy(parent[leaf]))
    else:
      parent[leaf] = [parent[leaf]] if rng.random() < 0.5 else {"v": parent[leaf]}
  return data


def _get(node, path):
  for k in path:
    node = node[k]
  return node


# ------------------------------------------------------------------------------
# Targets: each returns a short outcome kind ("ok" or "ok:<what>"), raises the
# documented error, or raises AssertionError for a wrong result.
# ------------------------------------------------------------------------------


def seed_json() -> bytes:
  sys.path.insert(0, HERE)
  from test_coco_json import make_json  # the fixture of tests/test_coco_json.py
  return json.dumps(make_json()).encode()


def check_coco_json(path: str) -> str:
  from mrcnn_jax.data import coco_json
  data = coco_json.load_json(path)
  cats = coco_json.categories(path, data)
  category_ids = [cid for cid, _ in cats]
  images, stats = coco_json.read_split(path, data, category_ids)
  # The oracle reads the same bytes independently.
  with open(path, "rb") as f:
    raw = json.loads(f.read())
  anns = {a["id"]: a for a in raw["annotations"]}
  skipped = sum(stats[f"skipped_{k}"] for k in (
      "unknown_category", "unknown_image", "empty_box", "no_valid_segmentation"))
  assert stats["num_objects"] + skipped == len(raw["annotations"]), (
      "annotations neither kept nor counted", stats)
  assert len(images) == len(raw["images"]), "images dropped"
  for im in images:
    assert im.height >= 1 and im.width >= 1
    for obj in im.objects:
      ann = anns[obj.id]
      assert ann["image_id"] == im.id and ann["category_id"] == obj.category_id
      assert category_ids[obj.label] == obj.category_id
      x, y, w, h = ann["bbox"]
      want = (max(x, 0), max(y, 0), min(x + w, im.width), min(y + h, im.height))
      assert np.allclose(obj.box, want), (obj.box, want)
      assert obj.box[2] > obj.box[0] and obj.box[3] > obj.box[1]
      mask = coco_json.object_mask(obj, im.height, im.width)
      assert mask.shape == (im.height, im.width) and mask.dtype == np.uint8
      assert mask.max(initial=0) <= 1
  return "ok"


def _tensors_equal(a: dict, b: dict) -> bool:
  if list(a) != list(b):
    return False
  for k in a:
    x, y = a[k], b[k]
    if (x.dtype != y.dtype or x.shape != y.shape or x.strides != y.strides
        or np.ascontiguousarray(x).tobytes() != np.ascontiguousarray(y).tobytes()):
      return False
  return True


def _read_all(obj) -> None:
  """Touches every byte of every array (out-of-bounds views would crash)."""
  if isinstance(obj, np.ndarray):
    np.ascontiguousarray(obj).tobytes()
  elif isinstance(obj, dict):
    for v in obj.values():
      _read_all(v)
  elif isinstance(obj, (list, tuple, set, frozenset)):
    for v in obj:
      _read_all(v)


def check_pth(path: str, original: dict | None) -> str:
  from mrcnn_jax.torch_io import load_torch_state_dict
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # non-tensor entries are skipped with a warning
    sd = load_torch_state_dict(path)
  assert isinstance(sd, dict) and sd, "empty state_dict"
  assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in sd.items())
  _read_all(sd)
  if original is not None:
    assert _tensors_equal(sd, original), "zip checkpoint changed without an error"
    return "ok:identical"
  return "ok"


def _rezip(data: bytes, pickle_bytes: bytes) -> bytes:
  """`data` (a torch zip) with its data.pkl replaced (valid CRC)."""
  src = zipfile.ZipFile(io.BytesIO(data))
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
    for info in src.infolist():
      body = pickle_bytes if info.filename.endswith("/data.pkl") else src.read(info)
      dst.writestr(info.filename, body)
  return out.getvalue()


def _data_pkl(data: bytes) -> bytes:
  with zipfile.ZipFile(io.BytesIO(data)) as zf:
    return zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))


def _image_file(fmt: str) -> bytes:
  from PIL import Image
  y, x = np.mgrid[0:12, 0:16]
  rgb = np.stack([x * 15, y * 20, 255 - x * 8 - y * 9], -1).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format=fmt)
  return buf.getvalue()


def check_image(path: str, original: np.ndarray | None) -> str:
  from mrcnn_jax import image_io
  rgb = image_io.read_rgb(path)
  assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[-1] == 3, rgb.shape
  if original is not None:
    assert rgb.shape == original.shape and np.array_equal(rgb, original), (
        "PNG changed without an error")
    return "ok:identical"
  return "ok"


def make_target(name: str):
  """(file name, seed bytes, mutate(rng) -> bytes, check(path) -> kind)."""
  if name == "json":
    base = seed_json()
    base_obj = json.loads(base)

    def mutate(rng):
      if rng.random() < 0.5:
        return mutate_bytes(base, rng)
      return json.dumps(mutate_json_value(base_obj, rng)).encode()
    return "instances.json", mutate, check_coco_json
  if name in ("png", "jpeg"):
    base = _image_file(name.upper())
    original = None
    if name == "png":  # every PNG chunk carries a CRC-32 (PIL checks it)
      from mrcnn_jax import image_io
      with tempfile.NamedTemporaryFile(suffix=".png") as f:
        f.write(base)
        f.flush()
        original = image_io.read_rgb(f.name)
    return (f"image.{name}", lambda rng: mutate_bytes(base, rng),
            lambda p: check_image(p, original))
  from mrcnn_jax.torch_io import load_torch_state_dict
  if name == "pth_zip":
    path = os.path.join(DATA, "torch_zip.pt")
    base = open(path, "rb").read()
    original = load_torch_state_dict(path)
    return "model.pth", lambda rng: mutate_bytes(base, rng), lambda p: check_pth(p, original)
  if name == "pth_pickle":
    base = open(os.path.join(DATA, "torch_zip.pt"), "rb").read()
    pkl = _data_pkl(base)
    return ("model.pth", lambda rng: _rezip(base, mutate_bytes(pkl, rng, protect=2)),
            lambda p: check_pth(p, None))
  if name == "pth_legacy":
    base = open(os.path.join(DATA, "torch_legacy.pt"), "rb").read()
    return "model.pth", lambda rng: mutate_bytes(base, rng), lambda p: check_pth(p, None)
  raise SystemExit(f"unknown target {name!r}")


TARGETS = ("json", "pth_zip", "pth_pickle", "pth_legacy", "png", "jpeg")


def run(target: str, cases: int, seed: int, case_seconds: float, out=None,
        check=None) -> tuple[collections.Counter, list[str]]:
  """Runs `cases` mutations of `target`, printing to `out` (stdout); returns
  (outcome counts, failures). `check` replaces the target's reader (to test
  this harness)."""
  out = out or sys.stdout
  file_name, mutate, target_check = make_target(target)
  check = check or target_check
  counts, failures = collections.Counter(), []
  previous = signal.signal(signal.SIGALRM, _alarm)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, file_name)
    try:
      for case in range(cases):
        rng = random.Random(f"{target}/{seed}/{case}")
        data = mutate(rng)
        with open(path, "wb") as f:
          f.write(data)
        print(f"CASE {target} seed={seed} case={case}", file=out, flush=True)
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, case_seconds)
        try:
          kind = check(path)
        except CaseTimeout:
          kind, problem = "timeout", f"took over {case_seconds} s"
        except ValueError as e:
          kind = f"error:{type(e).__name__}"
          problem = None if path in str(e) else f"message does not name the file: {e}"
        except AssertionError as e:
          kind, problem = "wrong", f"wrong result: {e}"
        except BaseException as e:  # noqa: BLE001 - any other type is the finding
          kind, problem = f"crash:{type(e).__name__}", f"{type(e).__name__}: {e}"[:500]
        else:
          problem = None
        finally:
          signal.setitimer(signal.ITIMER_REAL, 0)
        elapsed = time.perf_counter() - t0
        if problem is None and elapsed > case_seconds:
          problem = f"took {elapsed:.2f} s (over {case_seconds} s)"
        counts[kind] += 1
        if problem:
          failures.append(f"FAIL {target} seed={seed} case={case}: {problem}")
          print(failures[-1], file=out, flush=True)
    finally:
      signal.signal(signal.SIGALRM, previous)
  return counts, failures


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("targets", nargs="*", default=list(TARGETS))
  parser.add_argument("--cases", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--case-seconds", type=float, default=2.0)
  parser.add_argument("--memory-gb", type=float, default=2.0,
                      help="address-space limit of this process (an allocation beyond it is "
                      "a MemoryError, a finding, instead of taking the machine's memory)")
  args = parser.parse_args(argv)
  if args.memory_gb > 0:
    try:
      import resource
      limit = int(args.memory_gb * 2**30)
      resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError) as e:  # not on every platform
      print(f"NOTE no memory limit: {e}", flush=True)
  failed = False
  for target in args.targets:
    t0 = time.perf_counter()
    counts, failures = run(target, args.cases, args.seed, args.case_seconds)
    failed |= bool(failures)
    print(f"SUMMARY {target} {json.dumps(dict(sorted(counts.items())))} "
          f"{time.perf_counter() - t0:.2f}s", flush=True)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
