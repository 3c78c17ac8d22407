"""Read PyTorch checkpoints (.pth / .pt) without torch and without pickle code.

``torch.save`` writes Python pickles, and ``pickle.load`` on an untrusted file
can run anything the pickle asks for (``os.system`` and friends). This module
reads the tensors out of such files with a *restricted* unpickler: every
global a pickle refers to is looked up in a small allowlist and mapped to a
stand-in written here (torch is never imported, nor is any module the pickle
names); anything else raises :class:`UnsafeCheckpointError` before it is
called.

Two on-disk formats are understood:

* **zip** (torch >= 1.6, the default): a zip archive with one top folder
  ``<name>/`` holding ``data.pkl`` (the object pickle; storages are persistent
  ids ``('storage', storage_type, key, location, numel)``), the raw storages
  ``data/<key>`` and optionally ``byteorder`` (``little`` or ``big``; absent
  means little).
* **legacy** (torch < 1.6, or ``_use_new_zipfile_serialization=False``):
  consecutive pickles -- the magic number ``0x1950a86a20f9469cfc6c``, the
  protocol version ``1001``, a ``sys_info`` dict, the object pickle (storages
  are persistent ids ``('storage', storage_type, root_key, location, numel,
  view_metadata)``), the list of storage keys -- and then, for each key in
  that order, a little-endian int64 element count followed by the raw
  little-endian bytes. torchvision's published detection checkpoints (2019)
  use it.

The even older tar format (torch < 0.1.10) and TorchScript archives are not
supported and give a :class:`ValueError`.

Tensors come back as :class:`numpy.ndarray` with torch's dtype, shape and
strides (``strides == torch_stride * itemsize``). As with ``torch.load``,
tensors that share a storage in the file share memory in the result (a saved
view is a view of the saved base); use ``np.array(x)`` for an independent
contiguous copy. ``bfloat16`` and the ``float8_*`` types map to the
``ml_dtypes`` types, which come with jax; without ``ml_dtypes``, ``bfloat16``
is upcast (exactly) to a contiguous ``float32`` array and ``float8`` is
refused. Quantized, sparse, nested and other exotic tensors are not supported
(their rebuild functions are not on the allowlist).

Besides tensors a checkpoint may hold dicts, OrderedDicts, lists, tuples,
sets, numbers, strings and bytes; ``torch.Size`` (loaded as a tuple),
``torch.device`` and dtypes (loaded as strings such as ``"cuda:0"`` and
``"float32"``) and ``argparse.Namespace`` (loaded as a dict; torchvision's
reference training scripts store their ``args`` that way).
"""

from __future__ import annotations

import collections
import errno
import io
import math
import os
import pickle
import pickletools
import struct
import warnings
import zipfile
import zlib
from typing import Any, BinaryIO

import numpy as np

try:  # ships with jax
  import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - the tests monkeypatch this to None
  _ml_dtypes = None

__all__ = [
    "LEGACY_MAGIC_NUMBER",
    "LEGACY_PROTOCOL_VERSION",
    "UnsafeCheckpointError",
    "load_torch_checkpoint",
    "load_torch_state_dict",
]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


class UnsafeCheckpointError(ValueError):
  """A checkpoint pickle names a global that is not on the allowlist.

  Nothing the pickle names has been imported or called. ``path``, ``module``
  and ``name`` say which file and which global were refused.
  """

  def __init__(self, path: str, module: str, name: str):
    self.path = path
    self.module = module
    self.name = name
    super().__init__(
        f"{path}: refused to unpickle global '{module}.{name}': only "
        "tensors, storages, dtypes and plain containers are allowed in a "
        "checkpoint read by mrcnn_jax.torch_io (the file may run code or "
        "hold objects other than a state_dict; nothing was executed)")


# ---------------------------------------------------------------------------
# dtypes

# torch dtype name -> (itemsize, numpy dtype, or None where ml_dtypes has it)
_DTYPES: dict[str, tuple[int, Any]] = {
    "float64": (8, np.dtype("float64")),
    "float32": (4, np.dtype("float32")),
    "float16": (2, np.dtype("float16")),
    "bfloat16": (2, None),
    "complex128": (16, np.dtype("complex128")),
    "complex64": (8, np.dtype("complex64")),
    "int64": (8, np.dtype("int64")),
    "int32": (4, np.dtype("int32")),
    "int16": (2, np.dtype("int16")),
    "int8": (1, np.dtype("int8")),
    "uint64": (8, np.dtype("uint64")),
    "uint32": (4, np.dtype("uint32")),
    "uint16": (2, np.dtype("uint16")),
    "uint8": (1, np.dtype("uint8")),
    "bool": (1, np.dtype("bool")),
    "float8_e4m3fn": (1, None),
    "float8_e5m2": (1, None),
    "float8_e4m3fnuz": (1, None),
    "float8_e5m2fnuz": (1, None),
}

# Aliases torch defines (pickles use the canonical names, but be lenient).
_TORCH_DTYPE_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "long": "int64",
    "int": "int32",
    "short": "int16",
}

# Typed storage classes (legacy format, and the zip format for these dtypes).
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


def _itemsize(dtype_name: str) -> int:
  return _DTYPES[dtype_name][0]


def _numpy_dtype(dtype_name: str) -> np.dtype | None:
  """numpy dtype of a torch dtype name; None means bfloat16 to upcast."""
  dt = _DTYPES[dtype_name][1]
  if dt is not None:
    return dt
  if _ml_dtypes is not None:
    return np.dtype(getattr(_ml_dtypes, dtype_name))
  if dtype_name == "bfloat16":
    return None
  raise ValueError(f"tensor dtype {dtype_name} needs the ml_dtypes package")


# ---------------------------------------------------------------------------
# Stand-ins handed to the pickle machine. They are immutable: BUILD opcodes
# (``__setstate__``) and attribute assignment are refused, so a pickle cannot
# alter the allowlist's objects for this or any later load.


class _Frozen:
  __slots__ = ()

  def __setattr__(self, key, value):
    raise AttributeError(f"{type(self).__name__} is read-only")

  def __delattr__(self, key):
    raise AttributeError(f"{type(self).__name__} is read-only")

  def __setstate__(self, state):
    raise TypeError(f"BUILD on {type(self).__name__} is not allowed")

  def _init(self, **kw):
    for k, v in kw.items():
      object.__setattr__(self, k, v)


class _Global(_Frozen):
  """An allowlisted callable global."""

  __slots__ = ("qualname", "fn")

  def __init__(self, qualname, fn):
    self._init(qualname=qualname, fn=fn)

  def __call__(self, *args):
    return self.fn(*args)

  def __repr__(self):
    return f"<allowed {self.qualname}>"


class _StorageType(_Frozen):
  """Stand-in for torch.FloatStorage & co. and torch.storage.UntypedStorage."""

  __slots__ = ("qualname", "dtype_name")

  def __init__(self, qualname, dtype_name):
    self._init(qualname=qualname, dtype_name=dtype_name)

  def __repr__(self):
    return f"<storage type {self.qualname}>"


class _DType(_Frozen):
  """Stand-in for a torch.dtype such as torch.float32."""

  __slots__ = ("dtype_name",)

  def __init__(self, dtype_name):
    self._init(dtype_name=dtype_name)

  def __repr__(self):
    return f"<dtype {self.dtype_name}>"


class _TypeMarker(_Frozen):
  """Stand-in for torch.Tensor / torch.nn.Parameter, usable only as a tag."""

  __slots__ = ("qualname",)

  def __init__(self, qualname):
    self._init(qualname=qualname)

  def __repr__(self):
    return f"<type {self.qualname}>"


class _StorageRef(_Frozen):
  """Bytes [byte_offset, byte_offset + nbytes) of the root storage ``key``."""

  __slots__ = ("key", "dtype_name", "byte_offset", "nbytes")

  def __init__(self, key, dtype_name, byte_offset, nbytes):
    self._init(key=key, dtype_name=dtype_name, byte_offset=byte_offset,
               nbytes=nbytes)

  def __repr__(self):
    return f"<storage {self.key!r}>"


class _TensorRef(_Frozen):
  """A tensor, materialised once the storages' bytes have been read."""

  __slots__ = ("storage", "offset", "size", "stride", "dtype_name")

  def __init__(self, storage, offset, size, stride, dtype_name):
    self._init(storage=storage, offset=offset, size=size, stride=stride,
               dtype_name=dtype_name)


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _int(x, what):
  if not _is_int(x) or x < 0:
    raise ValueError(f"bad tensor {what}: {x!r}")
  return x


def _int_tuple(x, what):
  if not isinstance(x, (tuple, list)):
    raise ValueError(f"bad tensor {what}: {x!r}")
  return tuple(_int(v, what) for v in x)


def _make_tensor(storage, storage_offset, size, stride, dtype_name=None):
  if not isinstance(storage, _StorageRef):
    raise ValueError(f"tensor storage is a {type(storage).__name__}")
  size = _int_tuple(size, "size")
  stride = _int_tuple(stride, "stride")
  if len(size) != len(stride):
    raise ValueError(f"tensor size {size} and stride {stride} differ in rank")
  offset = _int(storage_offset, "storage offset")
  return _TensorRef(storage, offset, size, stride,
                    dtype_name or storage.dtype_name)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride,
                       requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(dtype, _DType):
    raise ValueError(f"bad tensor dtype {dtype!r}")
  return _make_tensor(storage, storage_offset, size, stride, dtype.dtype_name)


def _rebuild_parameter(data, requires_grad, backward_hooks):
  del requires_grad, backward_hooks
  if not isinstance(data, _TensorRef):
    raise ValueError("Parameter data is not a tensor")
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del state
  return _rebuild_parameter(data, requires_grad, backward_hooks)


def _rebuild_from_type_v2(func, new_type, args, state):
  # Tensors carrying Python attributes, and Parameter/Tensor subclasses. The
  # attributes (``state``) are dropped; only Tensor/Parameter tags pass.
  del state
  if (not isinstance(func, _Global) or not isinstance(new_type, _TypeMarker)
      or not isinstance(args, tuple)):
    raise ValueError("unsupported _rebuild_from_type_v2 arguments")
  out = func(*args)
  if not isinstance(out, _TensorRef):
    raise ValueError("_rebuild_from_type_v2 did not produce a tensor")
  return out


class _Namespace(dict):
  """Inert stand-in for argparse.Namespace; loads as a dict of its fields."""

  __slots__ = ()

  def __setstate__(self, state):
    if not isinstance(state, dict) or not all(isinstance(k, str)
                                              for k in state):
      raise ValueError("bad argparse.Namespace state")
    self.update(state)


def _torch_size(seq=()):
  return _int_tuple(seq, "size")


def _torch_device(kind, index=None):
  if not isinstance(kind, str) or not (index is None or _is_int(index)):
    raise ValueError(f"bad torch.device({kind!r}, {index!r})")
  return kind if index is None else f"{kind}:{index}"


def _codecs_encode(obj, encoding="utf-8"):
  # Protocol-2 pickles write ``bytes`` as _codecs.encode(str, "latin1").
  if isinstance(obj, str) and encoding in ("latin1", "latin-1", "utf-8",
                                           "utf8", "ascii"):
    return obj.encode(encoding)
  raise ValueError(
      f"unsupported _codecs.encode({type(obj).__name__}, {encoding!r})")


def _bytearray(obj=b""):
  if not isinstance(obj, (bytes, bytearray)):
    raise ValueError("bytearray() only from bytes")
  return bytearray(obj)


def _build_allowlist() -> dict[tuple[str, str], Any]:
  """(module, name) -> stand-in; the only globals a checkpoint may name."""
  allowed: dict[tuple[str, str], Any] = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("builtins", "set"): set,
      ("builtins", "frozenset"): frozenset,
      ("builtins", "complex"): complex,
      ("builtins", "bytearray"): _Global("builtins.bytearray", _bytearray),
      ("_codecs", "encode"): _Global("_codecs.encode", _codecs_encode),
      ("argparse", "Namespace"): _Namespace,
      ("torch", "Size"): _Global("torch.Size", _torch_size),
      ("torch", "device"): _Global("torch.device", _torch_device),
      ("torch", "Tensor"): _TypeMarker("torch.Tensor"),
      ("torch._tensor", "Tensor"): _TypeMarker("torch.Tensor"),
      ("torch.nn.parameter", "Parameter"):
          _TypeMarker("torch.nn.parameter.Parameter"),
      ("torch._tensor", "_rebuild_from_type_v2"):
          _Global("torch._tensor._rebuild_from_type_v2",
                  _rebuild_from_type_v2),
      ("torch.storage", "UntypedStorage"):
          _StorageType("torch.storage.UntypedStorage", "uint8"),
      ("torch", "UntypedStorage"):
          _StorageType("torch.UntypedStorage", "uint8"),
      # No dtype: refused if used as a storage type (torch never does).
      ("torch.storage", "TypedStorage"):
          _StorageType("torch.storage.TypedStorage", None),
  }
  for fn in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
             _rebuild_parameter, _rebuild_parameter_with_state):
    allowed[("torch._utils", fn.__name__)] = _Global(
        f"torch._utils.{fn.__name__}", fn)
  for name, dtype_name in _STORAGE_DTYPES.items():
    # Legacy files saved from the GPU name torch.cuda.FloatStorage & co.
    for module in ("torch", "torch.cuda"):
      allowed[(module, name)] = _StorageType(f"{module}.{name}", dtype_name)
  for name in list(_DTYPES) + list(_TORCH_DTYPE_ALIASES):
    allowed[("torch", name)] = _DType(_TORCH_DTYPE_ALIASES.get(name, name))
  return allowed


_ALLOWED = _build_allowlist()
# Python 2 module names, which pickle protocols < 3 may use.
_COMPAT_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _ascii(x):
  return x.decode("ascii") if isinstance(x, bytes) else x


class _RestrictedUnpickler(pickle.Unpickler):
  """Allowlist ``find_class``; torch storage ids via ``persistent_load``.

  ``storages`` collects ``key -> [dtype_name, nbytes]`` of every storage the
  pickle refers to; None allows no persistent ids at all.
  """

  def __init__(self, file, path: str, storages: dict | None = None,
               legacy: bool = False):
    super().__init__(file, encoding="utf-8")
    self._path = path
    self._storages = storages
    self._legacy = legacy
    self._views: dict[str, _StorageRef] = {}

  def find_class(self, module, name):
    module = _COMPAT_MODULES.get(module, module)
    obj = _ALLOWED.get((module, name))
    if obj is None:
      raise UnsafeCheckpointError(self._path, str(module), str(name))
    return obj

  def persistent_load(self, pid):
    if self._storages is None or not isinstance(pid, tuple) or not pid:
      raise ValueError(f"unexpected persistent id {pid!r}")
    typename = _ascii(pid[0])
    if typename != "storage":
      raise ValueError(f"unsupported persistent id type {typename!r}")
    if self._legacy:
      if len(pid) != 6:
        raise ValueError(f"bad legacy storage id {pid!r}")
      storage_type, key, _, numel, view_metadata = pid[1:]
    else:
      if len(pid) != 5:
        raise ValueError(f"bad storage id {pid!r}")
      storage_type, key, _, numel = pid[1:]
      view_metadata = None
    if (not isinstance(storage_type, _StorageType)
        or storage_type.dtype_name is None):
      raise ValueError(f"bad storage type {storage_type!r}")
    key = _ascii(key)
    if not isinstance(key, str):
      raise ValueError(f"bad storage key {key!r}")
    dtype_name = storage_type.dtype_name
    itemsize = _itemsize(dtype_name)
    nbytes = _int(numel, "storage size") * itemsize
    # As torch does, the first reference fixes the storage's dtype and size.
    entry = self._storages.setdefault(key, [dtype_name, nbytes])
    if view_metadata is None:
      return _StorageRef(key, dtype_name, 0, min(nbytes, entry[1]))
    # Storage view of a legacy file (torch <= 0.4): (view_key, offset, size),
    # in elements.
    if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
      raise ValueError(f"bad storage view {view_metadata!r}")
    view_key, offset, view_size = view_metadata
    view_key = _ascii(view_key)
    if view_key not in self._views:
      ref = _StorageRef(key, dtype_name,
                        _int(offset, "view offset") * itemsize,
                        _int(view_size, "view size") * itemsize)
      if ref.byte_offset + ref.nbytes > entry[1]:
        raise ValueError(f"storage view {view_key!r} exceeds storage {key!r}")
      self._views[view_key] = ref
    return self._views[view_key]


# ---------------------------------------------------------------------------
# Reading.

_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
    struct.error,
)


_MEMO_OPCODES = ("PUT", "BINPUT", "LONG_BINPUT")


def _check_opcodes(f: BinaryIO, size: int, path: str, what: str) -> None:
  """Reads the pickle at ``f``'s position up to its STOP without running it
  (``pickletools.genops`` only decodes opcodes) and refuses what would make
  the C unpickler allocate far beyond the file: a memo index (PUT) larger
  than the pickle (the unpickler grows and zeroes its memo up to the index:
  gigabytes from a 4-byte argument) or a FRAME longer than the file.
  ``size``: the bytes left in the file. Rewinds ``f`` to where it was."""
  start = f.tell()
  try:
    for opcode, arg, _ in pickletools.genops(f):
      if opcode.name in _MEMO_OPCODES and arg > size:
        raise ValueError(f"memo index {arg} beyond the {size}-byte pickle")
      if opcode.name == "FRAME" and arg > size:
        raise ValueError(f"frame of {arg} bytes in a {size}-byte pickle")
  except Exception as e:  # genops raises several types on garbage
    raise ValueError(f"{path}: corrupt or unsupported {what}: "
                     f"{type(e).__name__}: {e}") from e
  finally:
    f.seek(start)


def _unpickle(unpickler: _RestrictedUnpickler, path: str, what: str):
  try:
    return unpickler.load()
  except UnsafeCheckpointError:
    raise
  except _PICKLE_ERRORS as e:
    raise ValueError(f"{path}: corrupt or unsupported {what}: "
                     f"{type(e).__name__}: {e}") from e


def _byteswap_inplace(buf: np.ndarray, dtype_name: str) -> None:
  unit = _itemsize(dtype_name)
  if dtype_name.startswith("complex"):
    unit //= 2  # each component is swapped on its own
  if unit > 1 and buf.size:
    view = buf[:buf.size - buf.size % unit].reshape(-1, unit)
    view[...] = view[:, ::-1].copy()


def _read_zip(f: BinaryIO, path: str):
  """Object pickle and storage buffers of a zip-format checkpoint."""
  file_size = os.fstat(f.fileno()).st_size
  try:
    zf = zipfile.ZipFile(f)
  except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError,
          ValueError, NotImplementedError) as e:
    raise ValueError(
        f"{path}: corrupt or truncated zip archive (expected a torch.save "
        "zip checkpoint with <name>/data.pkl and <name>/data/<key> "
        f"records): {e}") from e
  with zf:
    names = set(zf.namelist())
    pkls = [n for n in names if n == "data.pkl"
            or (n.endswith("/data.pkl") and n.count("/") == 1)]
    if len(pkls) != 1:
      raise ValueError(
          f"{path}: zip archive is not a torch.save checkpoint: expected "
          f"exactly one '<name>/data.pkl' record, found {len(pkls)}")
    prefix = pkls[0][:-len("data.pkl")]
    if prefix + "constants.pkl" in names:
      raise ValueError(f"{path}: a TorchScript archive (torch.jit.save), "
                       "not a torch.save checkpoint")

    def record(name: str, nbytes: int | None = None) -> bytearray:
      """Record ``name`` (its first ``nbytes`` bytes), CRC-checked if whole."""
      info = zf.getinfo(prefix + name)
      # Sizes come from the (possibly damaged) directory: bound them by the
      # file before allocating (torch stores records uncompressed; deflate
      # expands at most ~1032x).
      limit = info.compress_size * (
          1 if info.compress_type == zipfile.ZIP_STORED else 1032) + 64
      if info.compress_size > file_size or info.file_size > limit:
        raise ValueError(f"record {prefix + name} claims {info.file_size} "
                         f"bytes ({info.compress_size} stored) in a "
                         f"{file_size}-byte file")
      if nbytes is not None and info.file_size < nbytes:
        raise ValueError(f"record {prefix + name} has {info.file_size} "
                         f"bytes, the pickle expects {nbytes}")
      out = bytearray(info.file_size if nbytes is None else nbytes)
      with zf.open(info) as src:
        if src.readinto(out) != len(out):
          raise EOFError(f"record {prefix + name} is truncated")
        if len(out) == info.file_size:
          src.read(1)  # reach the end, where zipfile checks the CRC
      return out

    try:
      byteorder = "little"
      if prefix + "byteorder" in names:
        byteorder = bytes(record("byteorder")).decode("ascii", "replace")
        if byteorder.strip() not in ("little", "big"):
          raise ValueError(f"unknown byteorder record {byteorder!r}")
        byteorder = byteorder.strip()
      storages: dict[str, list] = {}
      pkl = bytes(record("data.pkl"))
      _check_opcodes(io.BytesIO(pkl), len(pkl), path, "data.pkl pickle")
      unpickler = _RestrictedUnpickler(io.BytesIO(pkl), path, storages)
      obj = _unpickle(unpickler, path, "data.pkl pickle")
      buffers = {}
      for key, (dtype_name, nbytes) in storages.items():
        if prefix + "data/" + key not in names:
          raise ValueError(f"missing storage record {prefix}data/{key}")
        buf = np.frombuffer(record("data/" + key, nbytes), dtype=np.uint8)
        if byteorder != "little":
          _byteswap_inplace(buf, dtype_name)
        buffers[key] = buf
    except UnsafeCheckpointError:
      raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError,
            ValueError, NotImplementedError, RuntimeError) as e:
      # (zipfile: NotImplementedError for a compression method, version or
      # flag it lacks, RuntimeError for encrypted records)
      if isinstance(e, ValueError) and str(e).startswith(f"{path}: "):
        raise
      raise ValueError(f"{path}: corrupt torch zip checkpoint: {e}") from e
  return obj, buffers


def _read_legacy(f: BinaryIO, path: str):
  """Object pickle and storage buffers of a legacy-format checkpoint."""

  file_size = os.fstat(f.fileno()).st_size

  def load(what, storages=None):
    _check_opcodes(f, file_size - f.tell(), path, what)
    unpickler = _RestrictedUnpickler(f, path, storages, legacy=True)
    return _unpickle(unpickler, path, what)

  not_torch = (
      f"{path}: not a PyTorch checkpoint: expected a zip archive (torch >= "
      "1.6) or a legacy torch.save file starting with the pickled magic "
      f"number {LEGACY_MAGIC_NUMBER:#x}")
  try:
    magic = load("legacy magic number")
  except UnsafeCheckpointError:
    raise
  except ValueError as e:
    raise ValueError(not_torch) from e
  if not _is_int(magic) or magic != LEGACY_MAGIC_NUMBER:
    raise ValueError(not_torch)
  version = load("legacy protocol version")
  if version != LEGACY_PROTOCOL_VERSION:
    raise ValueError(
        f"{path}: unsupported legacy torch.save protocol version "
        f"{version!r} (expected {LEGACY_PROTOCOL_VERSION})")
  sys_info = load("legacy sys_info")
  if not isinstance(sys_info, dict):
    raise ValueError(f"{path}: corrupt legacy checkpoint: sys_info is a "
                     f"{type(sys_info).__name__}, expected a dict")
  storages: dict[str, list] = {}
  obj = load("object pickle", storages)
  keys = load("storage key list")
  if not isinstance(keys, (list, tuple)):
    raise ValueError(f"{path}: corrupt legacy checkpoint: storage keys are a "
                     f"{type(keys).__name__}, expected a list")

  buffers = {}
  for key in keys:
    key = _ascii(key)
    if key not in storages:
      raise ValueError(f"{path}: corrupt legacy checkpoint: storage key "
                       f"{key!r} is not used by the pickle")
    dtype_name, nbytes = storages[key]
    itemsize = _itemsize(dtype_name)
    head = f.read(8)
    if len(head) != 8:
      raise ValueError(f"{path}: truncated legacy checkpoint: the size of "
                       f"storage {key!r} is missing")
    (count,) = struct.unpack("<q", head)  # always written little-endian
    if count * itemsize != nbytes:
      raise ValueError(
          f"{path}: corrupt legacy checkpoint: storage {key!r} has {count} "
          f"elements, the pickle expects {nbytes // itemsize}")
    remaining = file_size - f.tell()
    if nbytes > remaining:
      raise ValueError(
          f"{path}: truncated legacy checkpoint: storage {key!r} needs "
          f"{nbytes} bytes, only {remaining} are left")
    raw = bytearray(nbytes)
    if f.readinto(raw) != nbytes:
      raise ValueError(f"{path}: truncated legacy checkpoint: storage {key!r}")
    buf = np.frombuffer(raw, dtype=np.uint8)
    if not np.little_endian:  # pragma: no cover - the bytes are little-endian
      _byteswap_inplace(buf, dtype_name)
    buffers[key] = buf
  missing = sorted(set(storages) - set(buffers))
  if missing:
    raise ValueError(f"{path}: corrupt legacy checkpoint: no data for "
                     f"storages {missing[:5]}")
  return obj, buffers


def _materialize(t: _TensorRef, buffers: dict[str, np.ndarray],
                 path: str) -> np.ndarray:
  """The array of ``t``: a bounds-checked view of its storage's bytes."""
  s = t.storage
  buf = buffers[s.key][s.byte_offset:s.byte_offset + s.nbytes]
  itemsize = _itemsize(t.dtype_name)
  try:
    np_dtype = _numpy_dtype(t.dtype_name)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  upcast_bf16 = np_dtype is None
  if upcast_bf16:
    np_dtype = np.dtype(np.uint16)
  size, stride, offset = t.size, t.stride, t.offset
  strides = tuple(st * itemsize for st in stride)
  if math.prod(size) == 0:  # nothing to read; keep torch's strides anyway
    out = np.ndarray(size, np_dtype, buffer=bytearray(0), strides=strides)
  else:
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if (last + 1) * itemsize > len(buf):
      raise ValueError(
          f"{path}: corrupt checkpoint: a {t.dtype_name} tensor (offset "
          f"{offset}, size {size}, stride {stride}) reaches byte "
          f"{(last + 1) * itemsize} of the {len(buf)}-byte storage {s.key!r}")
    out = np.ndarray(size, np_dtype, buffer=buf, offset=offset * itemsize,
                     strides=strides)
  if upcast_bf16:
    out = (out.astype(np.uint32) << 16).view(np.float32)
  return out


def _convert(obj, buffers, path):
  """Replace the stand-ins by arrays and plain values, cycles included."""
  memo: dict[int, Any] = {}

  def conv(x):
    if id(x) in memo:
      return memo[id(x)]
    if isinstance(x, _TensorRef):
      out = memo[id(x)] = _materialize(x, buffers, path)
      return out
    if isinstance(x, _DType):
      return x.dtype_name
    if isinstance(x, dict):  # dict, OrderedDict, _Namespace (-> dict)
      is_ordered = isinstance(x, collections.OrderedDict)
      out = memo[id(x)] = collections.OrderedDict() if is_ordered else {}
      for k, v in x.items():
        out[k] = conv(v)
      return out
    if isinstance(x, list):
      out = memo[id(x)] = []
      out.extend(conv(v) for v in x)
      return out
    if isinstance(x, tuple):
      return tuple(conv(v) for v in x)
    if isinstance(x, _Frozen):
      raise ValueError(f"{path}: the checkpoint holds a bare {x!r}")
    return x

  try:
    return conv(obj)
  except RecursionError:
    raise ValueError(f"{path}: corrupt checkpoint: containers nested too "
                     "deeply") from None


def _check_path(path) -> str:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(errno.ENOENT, "PyTorch checkpoint not found", path)
  return path


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
  """Loads a whole ``torch.save`` file safely, tensors as numpy arrays.

  Args:
    path: a ``.pth`` / ``.pt`` file in the zip or the legacy format.

  Returns:
    The saved object (dicts, lists, tuples, numbers, strings, ...) with each
    tensor or Parameter replaced by a :class:`numpy.ndarray`; see the module
    docstring for dtypes, strides and memory sharing.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    UnsafeCheckpointError: the pickle names a global that is not allowed; it
      was neither imported nor called.
    ValueError: not a torch checkpoint, truncated or corrupt, or holding
      tensors this reader does not support.
  """
  path = _check_path(path)
  with open(path, "rb") as f:
    head = f.read(512)
    f.seek(0)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
      obj, buffers = _read_zip(f, path)
    elif head[257:262] == b"ustar":
      raise ValueError(f"{path}: tar-format torch checkpoints (torch < "
                       "0.1.10) are not supported")
    else:
      obj, buffers = _read_legacy(f, path)
  return _convert(obj, buffers, path)


def _bears_tensors(x, depth=0) -> bool:
  if isinstance(x, np.ndarray):
    return True
  if depth >= 4:
    return False
  if isinstance(x, dict):
    return any(_bears_tensors(v, depth + 1) for v in x.values())
  if isinstance(x, (list, tuple)):
    return any(_bears_tensors(v, depth + 1) for v in x)
  return False


def load_torch_state_dict(path: str | os.PathLike, *,
                          key: str | None = None) -> dict[str, np.ndarray]:
  """Reads a ``torch.save``'d state_dict as ``{name: array}``, without torch.

  Reads the zip (torch >= 1.6) and the legacy (torch < 1.6, e.g. torchvision's
  2019 detection checkpoints) formats, never runs pickle code (see
  :class:`UnsafeCheckpointError`), and keeps each tensor's dtype, shape and
  strides; tensors that share a storage share memory, as with torch.load.

  Wrapped checkpoints are unwrapped: while the object is a dict with no tensor
  values of its own and exactly one value that holds tensors, and that value
  is a dict, descend into it. So ``{"model": state_dict, "epoch": 3}`` and
  ``{"state_dict": state_dict}`` both give ``state_dict``. When several values
  hold tensors (``{"model": ..., "optimizer": ...}``), pass ``key="model"`` to
  pick the top-level entry; unwrapping then goes on from there. Non-tensor
  entries of the state_dict itself are skipped with a warning.

  Args:
    path: a ``.pth`` / ``.pt`` file in the zip or the legacy format.
    key: optional top-level entry that holds the state_dict.

  Returns:
    The state_dict's tensors as numpy arrays, in the file's order.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    UnsafeCheckpointError: the pickle names a global that is not allowed; it
      was neither imported nor called.
    ValueError: not a torch checkpoint, truncated or corrupt, no state_dict
      in it, or several candidates and no ``key``.
  """
  path = _check_path(path)
  obj = load_torch_checkpoint(path)
  trail: list[str] = []
  seen: set[int] = set()
  if key is not None:
    if not isinstance(obj, dict) or key not in obj:
      have = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
      raise ValueError(
          f"{path}: the checkpoint has no top-level key {key!r} (has {have})")
    obj = obj[key]
    trail.append(key)
  while True:
    where = "".join(f"[{k!r}]" for k in trail) or "the top level"
    if not isinstance(obj, dict):
      raise ValueError(f"{path}: expected a state_dict (a dict of tensors) at "
                       f"{where}, got a {type(obj).__name__}")
    if any(isinstance(v, np.ndarray) for v in obj.values()):
      break
    candidates = [k for k, v in obj.items() if _bears_tensors(v)]
    seen.add(id(obj))
    if (len(candidates) == 1 and isinstance(obj[candidates[0]], dict)
        and id(obj[candidates[0]]) not in seen):  # a cycle never ends
      trail.append(candidates[0])
      obj = obj[candidates[0]]
      continue
    if not candidates:
      raise ValueError(
          f"{path}: no tensors at {where}; not a state_dict checkpoint")
    raise ValueError(
        f"{path}: cannot tell which entry at {where} is the state_dict: "
        f"{candidates[:10]} all hold tensors; pass key=... to choose")
  out: dict[str, np.ndarray] = {}
  skipped = []
  for k, v in obj.items():
    if not isinstance(v, np.ndarray):
      skipped.append(k)
    elif not isinstance(k, str):
      raise ValueError(f"{path}: state_dict key {k!r} is not a string")
    else:
      out[k] = v
  if skipped:
    warnings.warn(f"{path}: skipped {len(skipped)} non-tensor state_dict "
                  f"entries: {skipped[:10]}", stacklevel=2)
  return out
