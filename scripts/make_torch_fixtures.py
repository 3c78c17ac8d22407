"""(Re)creates the PyTorch checkpoint fixtures of tests/test_torch_io.py.

This script needs torch, so it runs in the torch reference environment
(torch 2.13 + torchvision 0.28, CPU), not in the project venv; CI has no
torch, and the tests only read what this writes::

  /work/tvenv/bin/python scripts/make_torch_fixtures.py

It writes, under tests/data/ (about 26 KB in all):

* ``torch_zip.pt``: a state_dict saved by ``torch.save`` (zip format):
  float32/float16/bfloat16/float64/int64/int32/int8/uint8/bool tensors, a
  transposed (non-contiguous) tensor, views sharing a storage at an offset, a
  stride-0 expanded tensor, 0-dim tensors (``num_batches_tracked``), an empty
  tensor, a Parameter, a uint16 tensor (``_rebuild_tensor_v3``) and a tensor
  with a Python attribute (``_rebuild_from_type_v2``).
* ``torch_legacy.pt``: the same but the last two, saved with
  ``_use_new_zipfile_serialization=False`` (the torch < 1.6 format).
* ``torch_nested.pt``: ``{"model": <small state_dict>, "epoch": 3,
  "args": {...}}``.
* ``torch_expected.npz`` and ``torch_expected.json``: each tensor's values
  (contiguous; bfloat16 and uint16 as uint16 bit patterns) and its dtype,
  shape, strides in bytes, storage offset, and which keys share a storage.
* ``malicious_zip.pt`` and ``malicious_legacy.pt``: pickles assembled here
  from raw opcodes (never executed) that hold one valid tensor and a call of
  ``os.system`` (zip) or ``__builtin__.eval`` (legacy) that would run
  ``echo MRCNN_JAX_PWNED``. A benign twin of each (the payload replaced by an
  int) is loaded with ``torch.load(weights_only=True)`` in a temporary folder
  to show that the rest is a valid checkpoint, and torch's weights-only
  loader is checked to refuse the malicious ones as well.
"""

import collections
import json
import os
import pickle
import pickletools
import struct
import tempfile
import zipfile

import numpy as np
import torch

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                    "tests", "data")
FIXTURES = [
    "torch_zip.pt",
    "torch_legacy.pt",
    "torch_nested.pt",
    "torch_expected.npz",
    "torch_expected.json",
    "malicious_zip.pt",
    "malicious_legacy.pt",
]
PWN_CMD = "echo MRCNN_JAX_PWNED"


def make_state_dict(zip_only: bool) -> collections.OrderedDict:
  """The fixture state_dict; ``zip_only`` adds what the legacy format lacks."""
  g = torch.Generator().manual_seed(0)
  base = torch.arange(20, dtype=torch.float32).reshape(4, 5)
  sd = collections.OrderedDict()
  sd["conv.weight"] = torch.randn(2, 3, 2, 2, generator=g)
  sd["conv.bias"] = torch.randn(2, generator=g).half()
  sd["fc.weight"] = torch.randn(3, 4, generator=g).to(torch.bfloat16)
  sd["fc.bias"] = torch.randn(3, generator=g).double()
  sd["bn.running_mean"] = torch.tensor(
      [float("nan"), float("inf"), -0.0, 1e-45])
  sd["bn.num_batches_tracked"] = torch.tensor(7)  # 0-dim int64
  sd["scalar.float"] = torch.tensor(1.5)
  sd["index.int64"] = torch.tensor([[-3, 0, 2**40 + 1]])
  sd["index.int32"] = torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32)
  sd["index.int8"] = torch.tensor([-128, 5, 127], dtype=torch.int8)
  sd["image.uint8"] = torch.arange(0, 250, 50, dtype=torch.uint8)
  sd["mask.bool"] = torch.tensor([[True, False, True], [False, False, True]])
  sd["transposed"] = torch.randn(3, 4, generator=g).t()  # strides (1, 4)
  sd["shared.base"] = base
  sd["shared.view"] = base[1:3, 2:5]  # storage offset 7, strides (5, 1)
  sd["shared.column"] = base[:, 3]  # storage offset 3, stride 5
  sd["shared.element"] = base[2, 4]  # 0-dim view, storage offset 14
  sd["expanded"] = torch.tensor([1.0, 2.0, 3.0]).expand(2, 3)  # strides (0, 1)
  sd["empty"] = torch.zeros(0, 3)
  sd["param"] = torch.nn.Parameter(torch.tensor([0.25, -0.5]))
  sd["half.transposed"] = torch.randn(2, 3, generator=g).half().t()
  # bfloat16 view: storage offset 4, strides (4, 2)
  sd["bf16.view"] = sd["fc.weight"][1:, ::2]
  if zip_only:
    # pickled via torch._utils._rebuild_tensor_v3 and an UntypedStorage
    sd["uint16"] = torch.tensor([0, 1, 65535], dtype=torch.uint16)
    with_attr = torch.tensor([3.0, 4.0])
    # pickled via torch._tensor._rebuild_from_type_v2
    with_attr.note = "python attribute"
    sd["with_attr"] = with_attr
  return sd


def to_numpy(t: torch.Tensor) -> np.ndarray:
  t = t.detach().contiguous()
  if t.dtype in (torch.bfloat16, torch.uint16):
    return t.view(torch.int16).numpy().view(np.uint16)
  return t.numpy()


def describe(sd) -> dict:
  meta = {}
  by_storage = collections.defaultdict(list)
  for k, t in sd.items():
    meta[k] = {
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": list(t.shape),
        "strides": [s * t.element_size() for s in t.stride()],
        "storage_offset": t.storage_offset(),
    }
    by_storage[t.untyped_storage().data_ptr()].append(k)
  return {"tensors": meta,
          "shared": [v for v in by_storage.values() if len(v) > 1]}


# ---------------------------------------------------------------------------
# Hand-made pickles.


def _str(s: str) -> bytes:
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _global(module: str, name: str) -> bytes:
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _int1(i: int) -> bytes:
  return b"K" + bytes([i])  # BININT1


def _tensor_pickle(legacy: bool) -> bytes:
  """_rebuild_tensor_v2(FloatStorage '0' [2], 0, (2,), (1,), False, {})."""
  pid = (b"(" + _str("storage") + _global("torch", "FloatStorage")
         + _str("0") + _str("cpu") + _int1(2))
  pid += (b"N" if legacy else b"") + b"t"  # legacy: view_metadata=None
  return (_global("torch._utils", "_rebuild_tensor_v2")
          + b"("  # MARK
          + pid + b"Q"  # BINPERSID
          + _int1(0)  # storage offset
          + _int1(2) + b"\x85"  # size (2,): TUPLE1
          + _int1(1) + b"\x85"  # stride (1,)
          + b"\x89"  # requires_grad: NEWFALSE
          + _global("collections", "OrderedDict") + b")R"  # backward hooks
          + b"tR")  # TUPLE, REDUCE


def _dict_pickle(legacy: bool, payload: bytes) -> bytes:
  return (b"\x80\x02}(" + _str("weight") + _tensor_pickle(legacy)
          + _str("payload") + payload + b"u.")


ZIP_PAYLOAD = _global("os", "system") + _str(PWN_CMD) + b"\x85R"
LEGACY_PAYLOAD = (_global("__builtin__", "eval")
                  + _str(f"__import__('os').system({PWN_CMD!r})") + b"\x85R")
BENIGN_PAYLOAD = _int1(1)
STORAGE_BYTES = np.array([1.5, -2.0], dtype="<f4").tobytes()


def write_zip_checkpoint(path: str, data_pkl: bytes) -> None:
  prefix = "malicious_zip/"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(prefix + "data.pkl", data_pkl)
    zf.writestr(prefix + "byteorder", b"little")
    zf.writestr(prefix + "data/0", STORAGE_BYTES)
    zf.writestr(prefix + "version", b"3\n")


def write_legacy_checkpoint(path: str, obj_pkl: bytes) -> None:
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
  with open(path, "wb") as f:
    f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
    f.write(pickle.dumps(1001, protocol=2))
    f.write(pickle.dumps(sys_info, protocol=2))
    f.write(obj_pkl)
    f.write(pickle.dumps(["0"], protocol=2))
    f.write(struct.pack("<q", 2) + STORAGE_BYTES)


def check_hand_made() -> None:
  """Benign twins load in torch; its weights-only loader refuses the rest."""
  writers = ((False, write_zip_checkpoint), (True, write_legacy_checkpoint))
  with tempfile.TemporaryDirectory() as tmp:
    for legacy, write in writers:
      benign = os.path.join(tmp, "benign.pt")
      write(benign, _dict_pickle(legacy, BENIGN_PAYLOAD))
      got = torch.load(benign, weights_only=True)
      assert got["payload"] == 1, got
      assert torch.equal(got["weight"], torch.tensor([1.5, -2.0])), got
      bad = os.path.join(tmp, "bad.pt")
      payload = LEGACY_PAYLOAD if legacy else ZIP_PAYLOAD
      write(bad, _dict_pickle(legacy, payload))
      try:
        torch.load(bad, weights_only=True)  # never executes the payload
      except pickle.UnpicklingError:
        pass
      else:
        raise AssertionError("torch.load(weights_only=True) accepted " + bad)


def main() -> None:
  os.makedirs(DATA, exist_ok=True)

  def out(name):
    return os.path.join(DATA, name)

  sd_zip = make_state_dict(zip_only=True)
  sd_legacy = make_state_dict(zip_only=False)
  torch.save(sd_zip, out("torch_zip.pt"))
  torch.save(sd_legacy, out("torch_legacy.pt"),
             _use_new_zipfile_serialization=False)
  small = collections.OrderedDict(
      (k, sd_zip[k])
      for k in ("conv.weight", "conv.bias", "bn.num_batches_tracked"))
  torch.save({"model": small, "epoch": 3,
              "args": {"lr": 0.02, "name": "fixture"}}, out("torch_nested.pt"))

  np.savez_compressed(out("torch_expected.npz"),
                      **{k: to_numpy(t) for k, t in sd_zip.items()})
  meta = {
      "generator": "scripts/make_torch_fixtures.py",
      "torch": torch.__version__,
      "torch_zip.pt": describe(sd_zip),
      "torch_legacy.pt": describe(sd_legacy),
      "torch_nested.pt": describe(small),
  }
  with open(out("torch_expected.json"), "w") as f:
    json.dump(meta, f, indent=1)  # keeps the key order, which is checked
    f.write("\n")

  for name, legacy, payload in (
      ("malicious_zip.pt", False, ZIP_PAYLOAD),
      ("malicious_legacy.pt", True, LEGACY_PAYLOAD)):
    pkl = _dict_pickle(legacy, payload)
    with open(os.devnull, "w") as devnull:
      pickletools.dis(pkl, out=devnull)  # well-formed; parses, runs nothing
    write = write_legacy_checkpoint if legacy else write_zip_checkpoint
    write(out(name), pkl)
  check_hand_made()

  total = 0
  for name in FIXTURES:
    size = os.path.getsize(out(name))
    total += size
    print(f"{size:7d}  tests/data/{name}")
  print(f"{total:7d}  total")


if __name__ == "__main__":
  main()
