"""Tests of mrcnn_jax.torch_io: reading torch.save files without torch.

torch is not needed: the checkpoints under tests/data/ and their expected
values were written by scripts/make_torch_fixtures.py in the torch env, and
the other hostile or corrupt inputs here are assembled from pickle opcodes.
"""

import builtins
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from mrcnn_jax import torch_io
from mrcnn_jax.torch_io import UnsafeCheckpointError
from mrcnn_jax.torch_io import load_torch_checkpoint
from mrcnn_jax.torch_io import load_torch_state_dict

DATA = pathlib.Path(__file__).parent / "data"
META = json.loads((DATA / "torch_expected.json").read_text())
with np.load(DATA / "torch_expected.npz") as _npz:
  EXPECTED = {k: _npz[k] for k in _npz.files}

FORMATS = ["torch_zip.pt", "torch_legacy.pt"]


def _bytes(a):
  return np.ascontiguousarray(a).tobytes()


def _check(name, got, meta):
  assert isinstance(got, np.ndarray), name
  assert got.dtype.name == meta["dtype"], name
  assert got.shape == tuple(meta["shape"]), name
  assert got.strides == tuple(meta["strides"]), name
  want = EXPECTED[name]
  assert want.shape == got.shape, name
  # Bitwise, so NaN and -0.0 count; bfloat16 and uint16 are stored as bits.
  assert _bytes(got) == _bytes(want), name


# ---------------------------------------------------------------------------
# Valid checkpoints.


@pytest.mark.parametrize("fixture", FORMATS)
def test_state_dict_matches_torch(fixture):
  sd = load_torch_state_dict(DATA / fixture)
  meta = META[fixture]["tensors"]
  assert list(sd) == list(meta)  # all keys, in torch's order
  for name, arr in sd.items():
    _check(name, arr, meta[name])


@pytest.mark.parametrize("fixture", FORMATS)
def test_special_cases(fixture):
  sd = load_torch_state_dict(DATA / fixture)
  tracked = sd["bn.num_batches_tracked"]
  assert tracked.shape == () and tracked.dtype == np.int64 and tracked == 7
  assert not sd["transposed"].flags.c_contiguous
  assert sd["transposed"].flags.f_contiguous
  base = np.arange(20, dtype=np.float32).reshape(4, 5)
  np.testing.assert_array_equal(sd["shared.view"], base[1:3, 2:5])
  np.testing.assert_array_equal(sd["shared.column"], base[:, 3])
  assert sd["shared.element"].shape == () and sd["shared.element"] == 14.0
  assert sd["expanded"].strides == (0, 4)
  assert sd["empty"].shape == (0, 3)
  assert sd["index.int64"][0, 2] == 2**40 + 1
  assert sd["mask.bool"].dtype == np.bool_
  assert np.isnan(sd["bn.running_mean"][0])
  assert np.signbit(sd["bn.running_mean"][2])
  fc = np.asarray(sd["fc.weight"], np.float32)
  np.testing.assert_array_equal(fc[1:, ::2],
                                np.asarray(sd["bf16.view"], np.float32))


@pytest.mark.parametrize("fixture", FORMATS)
def test_shared_storage_is_shared_memory(fixture):
  sd = load_torch_state_dict(DATA / fixture)
  groups = META[fixture]["shared"]
  assert any("shared.view" in g for g in groups)
  for group in groups:
    for other in group[1:]:
      if sd[group[0]].size and sd[other].size:
        assert np.shares_memory(sd[group[0]], sd[other]), group
  assert not np.shares_memory(sd["conv.weight"], sd["shared.base"])
  # Like torch.load: writing into the base shows through its saved views.
  assert sd["shared.base"].flags.writeable
  sd["shared.base"][1, 2] = -1.0
  assert sd["shared.view"][0, 0] == -1.0


def test_zip_and_legacy_agree():
  z = load_torch_state_dict(DATA / "torch_zip.pt")
  legacy = load_torch_state_dict(DATA / "torch_legacy.pt")
  assert set(legacy) == set(z) - {"uint16", "with_attr"}
  for k, v in legacy.items():
    assert v.dtype == z[k].dtype and v.shape == z[k].shape, k
    assert v.strides == z[k].strides, k
    assert _bytes(v) == _bytes(z[k]), k


@pytest.mark.parametrize("fixture", FORMATS)
def test_bfloat16_without_ml_dtypes_upcasts(monkeypatch, fixture):
  monkeypatch.setattr(torch_io, "_ml_dtypes", None)
  sd = load_torch_state_dict(DATA / fixture)
  meta = META[fixture]["tensors"]
  for name in ("fc.weight", "bf16.view"):
    got = sd[name]
    assert got.dtype == np.float32
    assert got.shape == tuple(meta[name]["shape"])
    bits = EXPECTED[name].astype(np.uint32) << 16
    assert _bytes(got) == _bytes(bits.view(np.float32))
  _check("conv.bias", sd["conv.bias"], meta["conv.bias"])


def test_nested_model_unwraps():
  sd = load_torch_state_dict(DATA / "torch_nested.pt")
  meta = META["torch_nested.pt"]["tensors"]
  assert list(sd) == list(meta)
  for name, arr in sd.items():
    _check(name, arr, meta[name])
  full = load_torch_checkpoint(DATA / "torch_nested.pt")
  assert full["epoch"] == 3
  assert full["args"] == {"lr": 0.02, "name": "fixture"}
  assert list(full["model"]) == list(meta)
  by_key = load_torch_state_dict(DATA / "torch_nested.pt", key="model")
  assert by_key.keys() == sd.keys()


def test_accepts_str_and_pathlike():
  a = load_torch_state_dict(str(DATA / "torch_nested.pt"))
  b = load_torch_state_dict(DATA / "torch_nested.pt")
  assert a.keys() == b.keys()


def test_works_with_torch_unimportable():
  paths = [str(DATA / f) for f in FORMATS]
  code = (
      "import sys; sys.modules['torch'] = None\n"  # `import torch` now fails
      "from mrcnn_jax.torch_io import load_torch_state_dict as load\n"
      f"for p in {paths!r}: assert len(load(p)) > 20\n"
      "assert sys.modules['torch'] is None\n")
  root = pathlib.Path(__file__).resolve().parents[1]
  pythonpath = os.pathsep.join(
      p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
  env = dict(os.environ, PYTHONPATH=pythonpath)
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


# ---------------------------------------------------------------------------
# Hand-assembled checkpoints: raw pickle opcodes, nothing is ever executed.


def _str(s):
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _global(module, name):
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _int1(i):
  return b"K" + bytes([i])  # BININT1


def _tensor(key="0", numel=2, size=2, legacy=False):
  """_rebuild_tensor_v2 of a float32 storage ``key`` of ``numel`` elements."""
  pid = (b"(" + _str("storage") + _global("torch", "FloatStorage")
         + _str(key) + _str("cpu") + _int1(numel))
  pid += (b"N" if legacy else b"") + b"t"
  return (_global("torch._utils", "_rebuild_tensor_v2")
          + b"(" + pid + b"Q" + _int1(0)
          + _int1(size) + b"\x85" + _int1(1) + b"\x85" + b"\x89"
          + _global("collections", "OrderedDict") + b")R" + b"tR")


def _dict(*items):
  """Pickle body (no PROTO or STOP) of a dict of (key, body) pairs."""
  return b"}(" + b"".join(_str(k) + v for k, v in items) + b"u"


def _pkl(body):
  return b"\x80\x02" + body + b"."


STORAGE = np.array([1.5, -2.0], "<f4").tobytes()


def _write_zip(path, data_pkl, storages=None, prefix="archive/"):
  if storages is None:
    storages = {"0": STORAGE}
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(prefix + "data.pkl", data_pkl)
    zf.writestr(prefix + "byteorder", b"little")
    for key, raw in storages.items():
      zf.writestr(prefix + "data/" + key, raw)
    zf.writestr(prefix + "version", b"3\n")
  return path


def _write_legacy(path, obj_pkl, keys=("0",), raw=STORAGE, n=2):
  sys_info = {"protocol_version": 1001, "little_endian": True}
  with open(path, "wb") as f:
    f.write(pickle.dumps(torch_io.LEGACY_MAGIC_NUMBER, protocol=2))
    f.write(pickle.dumps(1001, protocol=2))
    f.write(pickle.dumps(sys_info, protocol=2))
    f.write(obj_pkl)
    f.write(pickle.dumps(list(keys), protocol=2))
    for _ in keys:
      f.write(struct.pack("<q", n) + raw)
  return path


def test_hand_made_zip_and_legacy_load(tmp_path):
  z = _write_zip(tmp_path / "a.pt", _pkl(_dict(("w", _tensor()))))
  legacy = _write_legacy(tmp_path / "b.pt",
                         _pkl(_dict(("w", _tensor(legacy=True)))))
  for p in (z, legacy):
    sd = load_torch_state_dict(p)
    np.testing.assert_array_equal(sd["w"], np.array([1.5, -2.0], np.float32))


def test_other_allowed_values(tmp_path):
  size = _global("torch", "Size") + b"(" + _int1(2) + _int1(3) + b"t\x85R"
  device = _global("torch", "device") + _str("cuda") + _int1(1) + b"\x86R"
  dtype = _global("torch", "bfloat16")
  a_set = _global("__builtin__", "set") + b"]" + _int1(5) + b"a\x85R"
  body = _dict(("w", _tensor()), ("size", size), ("device", device),
               ("dtype", dtype), ("set", a_set))
  full = load_torch_checkpoint(_write_zip(tmp_path / "v.pt", _pkl(body)))
  assert full["size"] == (2, 3) and full["device"] == "cuda:1"
  assert full["dtype"] == "bfloat16" and full["set"] == {5}


def test_big_endian_zip_is_byteswapped(tmp_path):
  big = np.array([1.5, -2.0], ">f4").tobytes()
  p = _write_zip(tmp_path / "be.pt", _pkl(_dict(("w", _tensor()))),
                 {"0": big})
  with zipfile.ZipFile(p, "a") as zf, warnings.catch_warnings():
    warnings.simplefilter("ignore")  # duplicate name: the last one wins
    zf.writestr("archive/byteorder", b"big")
  sd = load_torch_state_dict(p)
  np.testing.assert_array_equal(sd["w"], np.array([1.5, -2.0], np.float32))
  assert sd["w"].dtype == np.float32 and sd["w"].dtype.isnative


def test_ambiguous_wrapper_needs_key(tmp_path):
  body = _dict(("model", _dict(("w", _tensor()))),
               ("ema", _dict(("w", _tensor()))), ("epoch", _int1(4)))
  p = _write_zip(tmp_path / "amb.pt", _pkl(body))
  with pytest.raises(ValueError, match=r"'model', 'ema'.*key="):
    load_torch_state_dict(p)
  assert list(load_torch_state_dict(p, key="ema")) == ["w"]
  with pytest.raises(ValueError, match="no top-level key 'nope'"):
    load_torch_state_dict(p, key="nope")


def test_deeper_wrapper_unwraps(tmp_path):
  model = _dict(("w", _tensor()))
  body = _dict(("state_dict", _dict(("model", model))),
               ("meta", _dict(("x", _int1(1)))))
  p = _write_zip(tmp_path / "deep.pt", _pkl(body))
  assert list(load_torch_state_dict(p)) == ["w"]


def test_argparse_namespace_loads_as_dict(tmp_path):
  # Protocol-2 pickle of argparse.Namespace(lr=1): NEWOBJ, then BUILD.
  ns = (_global("argparse", "Namespace") + b")\x81"
        + _dict(("lr", _int1(1))) + b"b")
  body = _dict(("model", _dict(("w", _tensor()))), ("args", ns))
  p = _write_zip(tmp_path / "ns.pt", _pkl(body))
  assert list(load_torch_state_dict(p)) == ["w"]
  full = load_torch_checkpoint(p)
  assert type(full["args"]) is dict and full["args"] == {"lr": 1}


def test_non_tensor_entries_skipped_with_warning(tmp_path):
  body = _dict(("w", _tensor()), ("note", _str("hi")))
  p = _write_zip(tmp_path / "mixed.pt", _pkl(body))
  with pytest.warns(UserWarning, match="note"):
    sd = load_torch_state_dict(p)
  assert list(sd) == ["w"]


def test_no_tensors_is_value_error(tmp_path):
  p = _write_zip(tmp_path / "none.pt", _pkl(_dict(("epoch", _int1(3)))))
  with pytest.raises(ValueError, match="no tensors"):
    load_torch_state_dict(p)


# ---------------------------------------------------------------------------
# Hostile pickles.


@pytest.fixture(name="tripwires")
def _tripwires(monkeypatch):
  """Replaces the usual code-execution entry points by recorders."""
  calls = []

  def recorder(name):
    return lambda *a, **k: calls.append((name, a))

  monkeypatch.setattr(os, "system", recorder("os.system"))
  monkeypatch.setattr(builtins, "eval", recorder("eval"))
  monkeypatch.setattr(builtins, "exec", recorder("exec"))
  monkeypatch.setattr(subprocess, "Popen", recorder("Popen"))
  return calls


@pytest.mark.parametrize("fixture, refused", [
    ("malicious_zip.pt", "os.system"),
    ("malicious_legacy.pt", "builtins.eval"),
])
@pytest.mark.parametrize("loader",
                         [load_torch_state_dict, load_torch_checkpoint])
def test_malicious_fixture_refused(tripwires, fixture, refused, loader):
  path = DATA / fixture
  with pytest.raises(UnsafeCheckpointError) as info:
    loader(path)
  err = info.value
  assert isinstance(err, ValueError)
  assert str(path) in str(err) and refused in str(err)
  assert f"{err.module}.{err.name}" == refused and err.path == str(path)
  assert not tripwires


REFUSED = [
    ("os", "system"),
    ("posix", "system"),
    ("subprocess", "Popen"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("__builtin__", "exec"),
    ("torch", "load"),
    ("torch.serialization", "load"),
    ("torch._utils", "_rebuild_qtensor"),
    ("collections", "OrderedDict.fromkeys"),
    ("torch._utils", "_rebuild_tensor_v2.__globals__"),
    ("numpy.core.multiarray", "scalar"),
    ("mrcnn_jax.torch_io", "_rebuild_tensor_v2"),
]


def _call(module, name, arg="echo MRCNN_JAX_PWNED"):
  return _global(module, name) + _str(arg) + b"\x85R"


@pytest.mark.parametrize("module, name", REFUSED)
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_refused_globals(tmp_path, tripwires, module, name, container):
  legacy = container == "legacy"
  body = _pkl(_dict(("w", _tensor(legacy=legacy)),
                    ("x", _call(module, name))))
  path = tmp_path / "bad.pt"
  (_write_legacy if legacy else _write_zip)(path, body)
  with pytest.raises(UnsafeCheckpointError, match="refused") as info:
    load_torch_state_dict(path)
  assert str(path) in str(info.value) and name in str(info.value)
  assert not tripwires


@pytest.mark.parametrize("payload", [
    # protocol 4 STACK_GLOBAL
    b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x04echo\x85R.",
    # protocol 0 INST
    b"(S'echo'\nios\nsystem\n.",
    # protocol 0 GLOBAL + REDUCE, Python 2 module name
    b"c__builtin__\neval\n(S'1+1'\ntR.",
], ids=["stack_global", "inst", "py2_global"])
def test_other_global_opcodes_refused(tmp_path, tripwires, payload):
  for path in (_write_zip(tmp_path / "z.pt", payload),
               _write_legacy(tmp_path / "l.pt", payload)):
    with pytest.raises(UnsafeCheckpointError):
      load_torch_checkpoint(path)
  assert not tripwires


def test_plain_malicious_pickle_refused(tmp_path, tripwires):
  """A bare pickle (no torch framing) is refused at its first global."""
  p = tmp_path / "plain.pth"
  p.write_bytes(_pkl(_call("os", "system")))
  with pytest.raises(UnsafeCheckpointError, match="os.system"):
    load_torch_state_dict(p)
  assert not tripwires


def test_build_cannot_mutate_allowlist(tmp_path):
  # BUILD ("b") on the FloatStorage stand-in, trying to retarget it to int8.
  evil = (_global("torch", "FloatStorage")
          + _dict(("dtype_name", _str("int8"))) + b"b")
  body = _dict(("w", _tensor()), ("x", evil))
  p = _write_zip(tmp_path / "build.pt", _pkl(body))
  with pytest.raises(ValueError):
    load_torch_state_dict(p)
  # ... and the stand-ins are unchanged for later loads.
  allowed = torch_io._ALLOWED  # pylint: disable=protected-access
  assert allowed[("torch", "FloatStorage")].dtype_name == "float32"
  sd = load_torch_state_dict(DATA / "torch_zip.pt")
  _check("conv.weight", sd["conv.weight"],
         META["torch_zip.pt"]["tensors"]["conv.weight"])


def test_storage_type_is_not_callable(tmp_path):
  body = _global("torch", "FloatStorage") + b")R"
  p = _write_zip(tmp_path / "call.pt", _pkl(body))
  with pytest.raises(ValueError):
    load_torch_checkpoint(p)


# ---------------------------------------------------------------------------
# Missing, corrupt, or not a checkpoint.


def test_missing_file(tmp_path):
  p = tmp_path / "nope.pth"
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    load_torch_state_dict(p)


@pytest.mark.parametrize("fixture", FORMATS + ["torch_nested.pt"])
@pytest.mark.parametrize("frac", [0.0, 0.05, 0.3, 0.6, 0.9, 0.999])
def test_truncated_file_is_value_error(tmp_path, fixture, frac):
  raw = (DATA / fixture).read_bytes()
  p = tmp_path / fixture
  p.write_bytes(raw[:int(len(raw) * frac)])
  with pytest.raises(ValueError) as info:
    load_torch_state_dict(p)
  assert not isinstance(info.value, UnsafeCheckpointError)
  assert str(p) in str(info.value)


def test_truncated_zip_message(tmp_path):
  raw = (DATA / "torch_zip.pt").read_bytes()
  p = tmp_path / "t.pt"
  p.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(ValueError, match="corrupt or truncated zip"):
    load_torch_state_dict(p)


def test_truncated_legacy_storage_message(tmp_path):
  raw = (DATA / "torch_legacy.pt").read_bytes()
  p = tmp_path / "t.pt"
  p.write_bytes(raw[:-3])
  with pytest.raises(ValueError, match="truncated legacy checkpoint"):
    load_torch_state_dict(p)


def test_corrupt_zip_storage_crc(tmp_path):
  raw = bytearray((DATA / "torch_zip.pt").read_bytes())
  with zipfile.ZipFile(DATA / "torch_zip.pt") as zf:
    info = next(i for i in zf.infolist() if i.filename.endswith("/data/0"))
  # Flip a byte of the stored payload of data/0, after its local header
  # (whose extra field, torch's alignment padding, has its own length).
  name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
  raw[info.header_offset + 30 + name_len + extra_len + 1] ^= 0xFF
  p = tmp_path / "crc.pt"
  p.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match="CRC"):
    load_torch_state_dict(p)


@pytest.mark.parametrize("content", [
    b"",
    b"hello, not a checkpoint\n",
    bytes(range(256)) * 4,
    pickle.dumps({"a": 1}, protocol=2),
], ids=["empty", "text", "binary", "other_pickle"])
def test_not_a_torch_file(tmp_path, content):
  p = tmp_path / "x.pth"
  p.write_bytes(content)
  with pytest.raises(ValueError, match="not a PyTorch checkpoint") as info:
    load_torch_state_dict(p)
  assert str(p) in str(info.value)


def test_zip_without_data_pkl(tmp_path):
  p = tmp_path / "plain.zip"
  with zipfile.ZipFile(p, "w") as zf:
    zf.writestr("readme.txt", "hi")
  with pytest.raises(ValueError, match="data.pkl"):
    load_torch_state_dict(p)


def test_missing_storage_record(tmp_path):
  p = _write_zip(tmp_path / "m.pt", _pkl(_dict(("w", _tensor()))),
                 storages={})
  with pytest.raises(ValueError, match="data/0"):
    load_torch_state_dict(p)


def test_tensor_out_of_storage_bounds(tmp_path):
  # Size 5 over a 2-element storage must not read past the buffer.
  for p in (
      _write_zip(tmp_path / "oob.pt", _pkl(_dict(("w", _tensor(size=5))))),
      _write_legacy(tmp_path / "oob_l.pt",
                    _pkl(_dict(("w", _tensor(size=5, legacy=True)))))):
    with pytest.raises(ValueError, match="reaches byte"):
      load_torch_state_dict(p)


def test_legacy_storage_count_mismatch(tmp_path):
  p = _write_legacy(tmp_path / "n.pt", _pkl(_dict(("w", _tensor(legacy=True)))),
                    n=3, raw=STORAGE + b"\0" * 4)
  with pytest.raises(ValueError, match="3 elements"):
    load_torch_state_dict(p)


def test_legacy_wrong_protocol_version(tmp_path):
  p = tmp_path / "v.pt"
  p.write_bytes(pickle.dumps(torch_io.LEGACY_MAGIC_NUMBER, protocol=2)
                + pickle.dumps(1000, protocol=2))
  with pytest.raises(ValueError, match="protocol version"):
    load_torch_state_dict(p)


def test_torchscript_archive_rejected(tmp_path):
  p = _write_zip(tmp_path / "ts.pt", _pkl(_dict(("w", _tensor()))))
  with zipfile.ZipFile(p, "a") as zf:
    zf.writestr("archive/constants.pkl", _pkl(b")"))
  with pytest.raises(ValueError, match="TorchScript"):
    load_torch_state_dict(p)


# ---------------------------------------------------------------------------
# Found by fuzzing (tests/fuzz_inputs.py): each gave another exception type,
# took seconds and gigabytes, or could.


def _central_entry(raw, name):
  """Offset of the central-directory entry of `name` in zip bytes `raw`."""
  start = raw.index(b"PK\x01\x02")
  while raw[start + 46:start + 46 + struct.unpack_from("<H", raw, start + 28)[0]] != name:
    start = raw.index(b"PK\x01\x02", start + 4)
  return start


@pytest.mark.parametrize("field, value, message", [
    (10, struct.pack("<H", 99), "compression method"),  # zipfile: NotImplementedError
    (8, struct.pack("<H", 1 << 6), "corrupt torch zip"),  # "strong encryption" flag
    (24, struct.pack("<I", 2**31), "claims 2147483648 bytes"),  # size before allocating
], ids=["compression", "encryption", "size"])
def test_damaged_zip_directory_is_value_error(tmp_path, field, value, message):
  raw = bytearray(_write_zip(tmp_path / "ok.pt", _pkl(_dict(("w", _tensor())))).read_bytes())
  at = _central_entry(bytes(raw), b"archive/data.pkl") + field
  raw[at:at + len(value)] = value
  p = tmp_path / "bad.pt"
  p.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match=message) as info:
    load_torch_state_dict(p)
  assert str(p) in str(info.value)


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_huge_memo_index_is_refused_before_unpickling(tmp_path, container):
  """LONG_BINPUT 2**31 makes the C unpickler grow and zero its memo to 16 GB
  (seconds, or the OOM killer) from five bytes."""
  legacy = container == "legacy"
  body = _pkl(_dict(("w", _tensor(legacy=legacy) + b"r" + struct.pack("<I", 2**31))))
  path = tmp_path / "memo.pt"
  (_write_legacy if legacy else _write_zip)(path, body)
  with pytest.raises(ValueError, match=r"memo index 2147483648 beyond the \d+-byte pickle"):
    load_torch_state_dict(path)


def test_containers_nested_too_deeply_are_value_error(tmp_path):
  depth = 100_000
  nested = b"]" * depth + b"a" * (depth - 1)  # [[[...]]] without recursion in pickle
  p = _write_zip(tmp_path / "deep.pt", _pkl(_dict(("w", _tensor()), ("deep", nested))))
  with pytest.raises(ValueError, match="nested too deeply"):
    load_torch_state_dict(p)
