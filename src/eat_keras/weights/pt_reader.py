"""Read a PyTorch ``state_dict`` checkpoint (``.pt``) into numpy arrays without torch.

Why not ``torch.load``: a ``.pt`` file is a pickle, and unpickling can call any importable function
(``os.system``, ``builtins.eval`` ...). ``torch.load`` without ``weights_only=True`` runs whatever the
file says, and we do not want a torch dependency at runtime anyway. This reader parses the torch >= 1.6
zip layout itself::

    <archive>/data.pkl       the pickled object tree (usually a dict of name -> tensor)
    <archive>/data/<key>     raw little-endian (see ``byteorder``) bytes of one storage each
    <archive>/byteorder      optional, "little" or "big"; absent means little (as torch assumes)
    <archive>/version        format version, not needed here

The pickle is loaded by an :class:`pickle.Unpickler` whose ``find_class`` resolves only an explicit
allow-list, each entry mapped to a stand-in defined in this module (the real torch modules are never
imported). Every other global raises :class:`~eat_keras.errors.WeightFileError` before anything runs.
Tensors are rebuilt from their storage with numpy (offset and strides honoured) and returned as
contiguous arrays. Legacy (pre-1.6, non-zip) torch files and TorchScript archives are not supported.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from eat_keras.errors import WeightFileError

__all__ = ["read_pt_state_dict"]

# Keys under which training scripts commonly nest the weights ({"state_dict": ..., "epoch": 3}).
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "model_state", "network", "weights")

# Start of a legacy (torch < 1.6) checkpoint: PROTO 2, then LONG1 of torch's magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


class _Corrupt(Exception):
    """Internal: the file is damaged or malformed; turned into a WeightFileError naming the file."""


# ----------------------------------------------------------------------------------------------------
# Stand-ins for torch objects. All use __slots__ so that a pickle BUILD opcode cannot attach state to
# them, and per-load instances are created so one file can never alter what the next file sees.


class _TorchDtype:
    """Stand-in for a ``torch.dtype`` object such as ``torch.float32``."""

    __slots__ = ("name", "itemsize", "raw", "_bf16")

    def __init__(self, name: str, raw: str) -> None:
        self.name = name
        self._bf16 = name == "bfloat16"
        # numpy has no bfloat16: the raw bits are read as uint16 and widened to float32 later.
        self.raw = np.dtype("u2" if self._bf16 else raw)
        self.itemsize = self.raw.itemsize

    def decode(self, data: bytes, count: int, big_endian: bool) -> np.ndarray:
        """The first ``count`` elements of ``data`` as a native-endian 1-D array."""
        raw = np.frombuffer(data, dtype=self.raw.newbyteorder(">" if big_endian else "<"), count=count)
        if self._bf16:
            # bfloat16 is the top half of a float32: shift the bits up and reinterpret.
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(self.raw.newbyteorder("="), copy=False)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


# torch dtype name -> numpy dtype of its bytes; aliases share one entry.
_DTYPE_TABLE: dict[str, str] = {
    "float32": "f4",
    "float64": "f8",
    "float16": "f2",
    "bfloat16": "u2",
    "int64": "i8",
    "int32": "i4",
    "int16": "i2",
    "int8": "i1",
    "uint8": "u1",
    "uint16": "u2",
    "uint32": "u4",
    "uint64": "u8",
    "bool": "?",
    "complex64": "c8",
    "complex128": "c16",
}
_DTYPE_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}
# Typed storage class -> dtype name. ``torch.cuda.*Storage`` appear in files saved from a GPU by old torch.
_STORAGE_TABLE = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


class _StorageType:
    """Stand-in for a storage class (``torch.FloatStorage``; ``dtype`` None for ``UntypedStorage``)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: _TorchDtype | None) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TensorClass:
    """Stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` as used by ``_rebuild_from_type_v2``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Storage:
    """One ``data/<key>`` record, read from the zip only when a tensor needs it."""

    __slots__ = ("_archive", "key", "dtype", "numel", "_cache")

    def __init__(self, archive: _Archive, key: str, dtype: _TorchDtype, numel: int) -> None:
        self._archive = archive
        self.key = key
        self.dtype = dtype  # uint8 for an untyped storage
        self.numel = numel
        self._cache: dict[str, np.ndarray] = {}

    def elements(self, dtype: _TorchDtype | None = None) -> np.ndarray:
        """The storage as a 1-D array of ``dtype`` (reinterpreting the bytes of an untyped storage)."""
        dtype = dtype or self.dtype
        if dtype.name not in self._cache:
            data = self._archive.record_bytes(self.key)
            nbytes = self.numel * self.dtype.itemsize
            if len(data) < nbytes:
                raise _Corrupt(
                    f"storage record data/{self.key} holds {len(data)} bytes but {self.numel} "
                    f"{self.dtype.name} elements need {nbytes}"
                )
            self._cache[dtype.name] = dtype.decode(data, nbytes // dtype.itemsize, self._archive.big_endian)
        return self._cache[dtype.name]


class _Archive:
    """The open zip plus what persistent_load needs: record prefix, byte order and loaded storages."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str, big_endian: bool) -> None:
        self.zf = zf
        self.prefix = prefix
        self.big_endian = big_endian
        self.storages: dict[str, _Storage] = {}

    def record_bytes(self, key: str) -> bytes:
        name = f"{self.prefix}/data/{key}"
        try:
            return self.zf.read(name)
        except KeyError:
            raise _Corrupt(f"storage record data/{key} is missing") from None


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise _Corrupt(f"tensor {what} {value!r} is not a tuple of non-negative integers")
    return tuple(int(v) for v in value)


def _make_tensor(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: _TorchDtype | None = None
) -> np.ndarray:
    """numpy equivalent of ``torch.Tensor.set_(storage, offset, size, stride)``, then a contiguous copy."""
    if not isinstance(storage, _Storage):
        raise _Corrupt(f"a tensor is built from {type(storage).__name__}, not from a storage")
    if not isinstance(offset, int) or offset < 0:
        raise _Corrupt(f"tensor storage offset {offset!r} is not a non-negative integer")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise _Corrupt(f"tensor size {shape} and stride {strides} differ in length")
    flat = storage.elements(dtype)
    if 0 in shape:
        return np.zeros(shape, dtype=flat.dtype)
    # as_strided does no bounds checking, so make sure the last element lies inside the storage.
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= flat.size:
        raise _Corrupt(
            f"storage data/{storage.key} has {flat.size} elements but a tensor of size {shape}, "
            f"stride {strides}, offset {offset} needs {last + 1}"
        )
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=shape, strides=[s * flat.itemsize for s in strides], writeable=False
    )
    # Copy so that the result owns contiguous memory and does not pin the whole storage.
    return np.array(view, copy=True, order="C")


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> np.ndarray:
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> np.ndarray:
    # torch uses v3 (untyped storage + explicit dtype) for dtypes without a typed storage, e.g. uint16.
    if not isinstance(dtype, _TorchDtype):
        raise _Corrupt(f"tensor dtype {dtype!r} is not a torch dtype")
    return _make_tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    return data  # an nn.Parameter is just its tensor for our purposes


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> Any:
    return data


_REBUILDERS: tuple[Callable[..., Any], ...] = (
    _rebuild_tensor,
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _rebuild_parameter,
    _rebuild_parameter_with_state,
)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    # Used for tensors carrying Python attributes. Only call our own rebuilders; drop the state.
    target = func._fn if isinstance(func, _Callable) else None
    if target not in _REBUILDERS or not isinstance(new_type, _TensorClass) or not isinstance(args, tuple):
        raise _Corrupt("_rebuild_from_type_v2 is applied to something other than a plain tensor")
    return func(*args)


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    return tuple(dims)


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles store bytes as _codecs.encode(str, "latin1"); allow exactly that, no other codec.
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise _Corrupt(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


class _Callable:
    """Wraps an allowed function so BUILD opcodes cannot set attributes on our module-level functions."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


def _allow_list() -> dict[tuple[str, str], Any]:
    """(module, name) -> stand-in. Built per load, so each file gets fresh stand-in objects."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _Callable(_rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v2"): _Callable(_rebuild_tensor_v2),
        ("torch._utils", "_rebuild_tensor_v3"): _Callable(_rebuild_tensor_v3),
        ("torch._utils", "_rebuild_parameter"): _Callable(_rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"): _Callable(_rebuild_parameter_with_state),
        ("torch._tensor", "_rebuild_from_type_v2"): _Callable(_rebuild_from_type_v2),
        ("torch", "Tensor"): _TensorClass("Tensor"),
        ("torch.nn.parameter", "Parameter"): _TensorClass("Parameter"),
        ("torch", "Size"): _Callable(_torch_size),
        ("torch", "UntypedStorage"): _StorageType("UntypedStorage", None),
        ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", None),
        ("_codecs", "encode"): _Callable(_codecs_encode),
        # Plain data types only: no getattr, eval, exec, __import__, type, object ...
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "bytes"): bytes,
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
    }
    dtypes = {name: _TorchDtype(name, raw) for name, raw in _DTYPE_TABLE.items()}
    for alias, name in _DTYPE_ALIASES.items():
        dtypes[alias] = dtypes[name]
    for name, dtype in dtypes.items():
        allowed[("torch", name)] = dtype
    for cls_name, dtype_name in _STORAGE_TABLE.items():
        storage_type = _StorageType(cls_name, dtypes[dtype_name])
        allowed[("torch", cls_name)] = storage_type
        allowed[("torch.cuda", cls_name)] = storage_type
    return allowed


# Python 2 / renamed module names as they may appear in a pickle, mapped to what the allow-list uses.
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg", "torch.tensor": "torch._tensor"}
# For the error message: os functions are pickled under the platform module's name.
_DISPLAY_ALIASES = {"posix": "os", "nt": "os", "__builtin__": "builtins"}


class _SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only allow-listed globals, to stand-ins; nothing is imported."""

    def __init__(self, data: bytes, archive: _Archive, path: Path) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._archive = archive
        self._path = path
        self._allowed = _allow_list()

    def find_class(self, module: str, name: str) -> Any:
        key = (_MODULE_ALIASES.get(module, module), name)
        if key in self._allowed:
            return self._allowed[key]
        raw = f"{module}.{name}"
        shown = f"{_DISPLAY_ALIASES.get(module, module)}.{name}"
        if shown != raw:
            shown = f"{shown} ({raw})"
        if module == "torch" or module.startswith("torch."):
            why = "which this safe reader does not support (only plain dense tensors are)"
        else:
            why = "which would run code"
        raise WeightFileError(f"refusing to load {self._path}: its pickle references {shown}, {why}")

    def persistent_load(self, pid: Any) -> _Storage:
        # torch writes ("storage", storage_type, key, location, numel) for every storage it saves.
        if not (isinstance(pid, tuple) and len(pid) == 5):
            raise _Corrupt(f"unexpected persistent id {pid!r}")
        typename, storage_type, key, _location, numel = pid
        if isinstance(typename, bytes):
            typename = typename.decode("ascii", "replace")
        if typename != "storage" or not isinstance(storage_type, _StorageType):
            raise _Corrupt(f"unexpected persistent id {pid!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise _Corrupt(f"unexpected persistent id {pid!r}")
        storage = self._archive.storages.get(key)
        if storage is None:
            # Untyped storages count bytes; tensors on them bring their own dtype (_rebuild_tensor_v3).
            dtype = storage_type.dtype or self._allowed[("torch", "uint8")]
            storage = _Storage(self._archive, key, dtype, numel)
            self._archive.storages[key] = storage
        return storage


# ----------------------------------------------------------------------------------------------------
# Picking the weights out of the unpickled object.


def _has_tensors(obj: Any) -> bool:
    if isinstance(obj, np.ndarray):
        return True
    if isinstance(obj, Mapping):
        return any(_has_tensors(v) for v in obj.values())
    return False


def _select_state_dict(obj: Any) -> Any:
    if not isinstance(obj, Mapping):
        return obj
    if any(isinstance(v, np.ndarray) for v in obj.values()):
        return obj  # already a state dict (stray non-tensor entries are skipped when flattening)
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping) and _has_tensors(obj[key]):
            return obj[key]
    nested = [v for v in obj.values() if isinstance(v, Mapping) and _has_tensors(v)]
    return nested[0] if len(nested) == 1 else obj


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    if isinstance(obj, np.ndarray):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    # anything else (epoch numbers, hyper-parameters, lists) is not a weight: ignore it


# ----------------------------------------------------------------------------------------------------


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise WeightFileError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise WeightFileError(f"checkpoint {path} is not a file")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_LEGACY_MAGIC))
    except OSError as err:
        raise WeightFileError(f"cannot read checkpoint {path}: {err}") from err
    if not head:
        raise WeightFileError(f"checkpoint {path} is empty (0 bytes)")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        pass
    except OSError as err:
        raise WeightFileError(f"cannot read checkpoint {path}: {err}") from err
    if head.startswith(b"PK\x03\x04"):
        raise WeightFileError(
            f"checkpoint {path} is a truncated or corrupt zip archive (no central directory); "
            "download it again"
        )
    if head.startswith(_LEGACY_MAGIC):
        raise WeightFileError(
            f"checkpoint {path} uses the legacy (torch < 1.6) format, which is not supported; "
            "re-save it with a recent torch"
        )
    raise WeightFileError(
        f"checkpoint {path} is not a zip archive: it may be a legacy (torch < 1.6) file, which is not "
        "supported, or not a PyTorch checkpoint at all"
    )


def _find_prefix(zf: zipfile.ZipFile, path: Path) -> str:
    names = zf.namelist()
    for name in names:
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == "data.pkl":
            return parts[0]
    if any(name.endswith("constants.pkl") for name in names):
        raise WeightFileError(f"{path} is a TorchScript archive, not a state_dict checkpoint; not supported")
    raise WeightFileError(f"{path} is a zip archive without <archive>/data.pkl: not a PyTorch checkpoint")


def read_pt_state_dict(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """Read the tensors of a torch >= 1.6 ``.pt`` checkpoint, safely and without torch.

    Returns name -> contiguous numpy array in the file's order (the order ``torch.load`` gives).
    bfloat16 tensors become float32; all other dtypes are kept. A top-level wrapper such as
    ``{"state_dict": {...}, "epoch": 3}`` is unwrapped and non-tensor entries are ignored; nested
    dicts of tensors are flattened with dotted names.

    Raises :class:`WeightFileError` (one line, naming the file) if the file is missing, not a zip,
    truncated or corrupt, holds no tensors, or its pickle references anything outside the allow-list
    of tensor-rebuilding functions and plain containers.
    """
    path = Path(path)
    with _open_zip(path) as zf:
        try:
            prefix = _find_prefix(zf, path)
            names = set(zf.namelist())
            big_endian = False  # torch's default when the byteorder record is absent
            if f"{prefix}/byteorder" in names:
                order = zf.read(f"{prefix}/byteorder").strip()
                if order not in (b"little", b"big"):
                    raise _Corrupt(f"unknown byteorder record {order[:20]!r}")
                big_endian = order == b"big"
            archive = _Archive(zf, prefix, big_endian)
            obj = _SafeUnpickler(zf.read(f"{prefix}/data.pkl"), archive, path).load()
        except WeightFileError:
            raise
        except _Corrupt as err:
            raise WeightFileError(f"checkpoint {path} is corrupt or truncated: {err}") from None
        except Exception as err:  # noqa: BLE001 - any failure parsing untrusted bytes means a bad file
            raise WeightFileError(
                f"checkpoint {path} is corrupt or truncated: {type(err).__name__}: {err}"
            ) from None
    tensors: dict[str, np.ndarray] = {}
    _flatten(_select_state_dict(obj), "", tensors)
    if not tensors:
        raise WeightFileError(f"checkpoint {path} contains no tensors")
    return tensors
