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

What a file can make the reader allocate is bounded: the pickle's opcodes are scanned before it is
unpickled (their count, memo indices and how deep values nest are capped, so neither memory nor a
recursive hash can run away), zip records are read with bounded reads after their declared size has
been checked against what the pickle needs, storages read and tensors built have byte budgets, and
the object tree is walked iteratively with each dict visited once (a dict reached twice, or its own
ancestor, is refused rather than expanded).
"""

from __future__ import annotations

import collections
import copy
import io
import math
import pickle
import pickletools
import reprlib
import zipfile
import zlib
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


# Limits on what one file may make the reader allocate. The largest EfficientAT model (mn40, 68.4 M
# parameters) is 274 MB of float32 storages; a state dict's pickle is under 100 KB, with 10k (MN) to
# 21k (DyMN) opcodes nested 5 deep whatever the width. Every limit leaves a wide margin above that
# while keeping a hostile file far from exhausting memory.
_MAX_PICKLE_BYTES = 32 << 20
_MAX_PICKLE_OPS = 1_000_000  # bounds objects, memo references and marks the unpickler holds
_MAX_DEPTH = 100  # keeps C-level recursion (tuple hashing, comparison, repr) far from the stack's end
_MAX_STORAGE_BYTES = 1 << 30  # all storage records read from one file together
_MAX_TENSOR_BYTES = 1 << 30  # all tensors built from one file together
_MAX_NDIM = 32  # numpy's own limit is 64; torch checkpoints rarely exceed 5
_MAX_TENSORS = 100_000
_MAX_NAME_CHARS = 1024
_MAX_SMALL_RECORD = 64  # the byteorder record: "little" or "big"
_READ_CHUNK = 1 << 20


class _Corrupt(Exception):
    """Internal: the file is damaged or malformed; turned into a WeightFileError naming the file."""


class _Unsafe(Exception):
    """Internal: the file asks for more than the reader's limits allow; turned into a WeightFileError."""


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 60


def _describe(value: Any) -> str:
    """A short one-line repr: values in messages come from the file and may be huge or deep."""
    try:
        return _SHORT_REPR.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print; the type still says enough
        return f"a {type(value).__name__}"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Budget:
    """Bytes one load may still allocate for one kind of data (storages read, or tensors built)."""

    __slots__ = ("what", "limit", "left")

    def __init__(self, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        self.left = limit

    def spend(self, nbytes: int, item: str) -> None:
        if nbytes > self.left:
            raise _Unsafe(
                f"{item} needs {nbytes:,} bytes, which would take {self.what} past the reader's limit of "
                f"{self.limit:,} bytes"
            )
        self.left -= nbytes


class _Frozen:
    """Base of the stand-ins: a pickle BUILD opcode calls ``__setstate__``, which refuses."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _Corrupt(f"its pickle tries to set the state of a {type(self).__name__.lstrip('_')}")


# ----------------------------------------------------------------------------------------------------
# Stand-ins for torch objects. All use __slots__ and refuse __setstate__ so that a pickle BUILD opcode
# cannot attach or change state, and per-load instances are created so one file can never alter what
# the next file sees.


class _TorchDtype(_Frozen):
    """Stand-in for a ``torch.dtype`` object such as ``torch.float32``."""

    __slots__ = ("name", "itemsize", "raw", "native", "_bf16")

    def __init__(self, name: str, raw: str) -> None:
        self.name = name
        self._bf16 = name == "bfloat16"
        # numpy has no bfloat16: the raw bits are read as uint16 and widened to float32 later.
        self.raw = np.dtype("u2" if self._bf16 else raw)
        self.itemsize = self.raw.itemsize
        self.native = np.dtype(np.float32) if self._bf16 else self.raw

    def file_dtype(self, big_endian: bool) -> np.dtype:
        return self.raw.newbyteorder(">" if big_endian else "<")

    def decode_copy_bytes(self, count: int, big_endian: bool) -> int:
        """Bytes :meth:`decode` allocates for ``count`` elements (0 where it returns a view)."""
        if self._bf16:
            return 4 * count
        return 0 if self.file_dtype(big_endian).isnative else count * self.itemsize

    def decode(self, data: bytes | bytearray, count: int, big_endian: bool) -> np.ndarray:
        """The first ``count`` elements of ``data`` as a native-endian 1-D array."""
        raw = np.frombuffer(data, dtype=self.file_dtype(big_endian), count=count)
        if self._bf16:
            # bfloat16 is the top half of a float32: shift the bits up (in place) and reinterpret.
            wide = raw.astype(np.uint32)
            wide <<= 16
            return wide.view(np.float32)
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


class _StorageType(_Frozen):
    """Stand-in for a storage class (``torch.FloatStorage``; ``dtype`` None for ``UntypedStorage``)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: _TorchDtype | None) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TensorClass(_Frozen):
    """Stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` as used by ``_rebuild_from_type_v2``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Storage(_Frozen):
    """One ``data/<key>`` record whose declared size fits its elements; read only when a tensor needs it."""

    __slots__ = ("archive", "key", "dtype", "nbytes", "_info", "_data", "_cache")

    def __init__(self, archive: _Archive, key: str, dtype: _TorchDtype, info: zipfile.ZipInfo) -> None:
        self.archive = archive
        self.key = key
        self.dtype = dtype  # uint8 for an untyped storage
        self.nbytes = info.file_size
        self._info = info
        self._data: bytearray | None = None
        self._cache: dict[str, np.ndarray] = {}

    def elements(self, dtype: _TorchDtype | None = None) -> np.ndarray:
        """The storage as a 1-D array of ``dtype`` (reinterpreting the bytes of an untyped storage)."""
        dtype = dtype or self.dtype
        if dtype.name not in self._cache:
            if self._data is None:
                self._data = _read_record(self.archive.zf, self._info)
            count, big_endian = self.nbytes // dtype.itemsize, self.archive.big_endian
            self.archive.storage_budget.spend(
                dtype.decode_copy_bytes(count, big_endian), f"decoding data/{self.key} as {dtype.name}"
            )
            self._cache[dtype.name] = dtype.decode(self._data, count, big_endian)
        return self._cache[dtype.name]


class _Archive:
    """The open zip plus what persistent_load needs: record prefix, byte order, loaded storages and
    the byte budgets of this load."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str, big_endian: bool) -> None:
        self.zf = zf
        self.prefix = prefix
        self.big_endian = big_endian
        self.storages: dict[str, _Storage] = {}
        self.storage_budget = _Budget("the storages read", _MAX_STORAGE_BYTES)
        self.tensor_budget = _Budget("the tensors built", _MAX_TENSOR_BYTES)

    def storage_record(self, key: str, nbytes: int, what: str) -> zipfile.ZipInfo:
        """The record of storage ``key``, whose declared size must be exactly ``nbytes``."""
        try:
            info = self.zf.getinfo(f"{self.prefix}/data/{key}")
        except KeyError:
            raise _Corrupt(f"storage record data/{key} is missing") from None
        if info.file_size != nbytes:
            raise _Corrupt(f"storage record data/{key} holds {info.file_size} bytes but {what} need {nbytes}")
        return info


def _read_record(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytearray:
    """A record's bytes, in bounded reads into a buffer of its declared size: however its data
    inflates, no more than that size plus one byte (to notice data that goes on) is taken."""
    size = info.file_size
    data = bytearray(size)
    done, crc = 0, 0
    # zipfile stops inflating at the declared size and checks the CRC there; declaring one byte more
    # lets data that goes on past it show itself, and the CRC is checked below over the declared bytes.
    probe = copy.copy(info)
    probe.file_size, probe.CRC = size + 1, None
    with zf.open(probe) as fh, memoryview(data) as view:
        while done < size:
            want = min(_READ_CHUNK, size - done)
            chunk = fh.read(want)
            if not chunk or len(chunk) > want:
                raise _Corrupt(f"record {info.filename} ends after {done} of its declared {size} bytes")
            view[done : done + len(chunk)] = chunk
            crc = zlib.crc32(chunk, crc)
            done += len(chunk)
        if fh.read(1):
            raise _Corrupt(f"record {info.filename} inflates to more than its declared {size} bytes")
    if crc != info.CRC:
        raise _Corrupt(f"record {info.filename} fails its CRC-32 check")
    return data


def _read_small_record(zf: zipfile.ZipFile, name: str, limit: int) -> bytearray:
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise _Unsafe(f"record {name} declares {info.file_size:,} bytes, more than the {limit:,} allowed")
    return _read_record(zf, info)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise _Corrupt(f"tensor {what} {_describe(value)} is not a tuple of non-negative integers")
    return tuple(int(v) for v in value)


def _tensor_geometry(offset: Any, size: Any, stride: Any) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Validated (offset, shape, strides); strides of dimensions of length one, which take no step
    and which torch may set to anything, become 0."""
    if not isinstance(offset, int) or offset < 0:
        raise _Corrupt(f"tensor storage offset {_describe(offset)} is not a non-negative integer")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise _Corrupt(f"tensor size {_describe(shape)} and stride {_describe(strides)} differ in length")
    if len(shape) > _MAX_NDIM or any(n > _MAX_TENSOR_BYTES for n in shape):
        raise _Unsafe(f"a tensor of size {_describe(shape)} exceeds the reader's limits on dimensions")
    return offset, shape, tuple(s if n > 1 else 0 for n, s in zip(shape, strides))


def _make_tensor(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: _TorchDtype | None = None
) -> np.ndarray:
    """numpy equivalent of ``torch.Tensor.set_(storage, offset, size, stride)``, then a contiguous copy."""
    if not isinstance(storage, _Storage):
        raise _Corrupt(f"a tensor is built from {type(storage).__name__}, not from a storage")
    offset, shape, strides = _tensor_geometry(offset, size, stride)
    dtype = dtype or storage.dtype
    # The copy below is what a stride-0 or overlapping view could blow up: budget it first.
    numel = math.prod(shape)
    storage.archive.tensor_budget.spend(numel * dtype.itemsize, f"a {dtype.name} tensor of size {shape}")
    if numel == 0:
        return np.zeros(shape, dtype=dtype.native)
    # as_strided does no bounds checking, so make sure the last element lies inside the storage.
    capacity = storage.nbytes // dtype.itemsize
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= capacity:
        raise _Corrupt(
            f"storage data/{storage.key} has {capacity} elements but a tensor of size {shape}, "
            f"stride {strides}, offset {offset} needs {last + 1}"
        )
    flat = storage.elements(dtype)
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


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol-2 pickles store bytes as _codecs.encode(str, "latin1"); allow exactly that, no other codec.
    latin1 = isinstance(encoding, str) and encoding.replace("-", "").lower() in ("latin1", "iso88591")
    if not isinstance(text, str) or not latin1:
        raise _Corrupt(f"unexpected _codecs.encode({type(text).__name__}, {_describe(encoding)})")
    return text.encode("latin-1")


def _plain_bytes(kind: type[bytes] | type[bytearray], args: tuple[Any, ...]) -> bytes | bytearray:
    """``bytes(...)`` / ``bytearray(...)`` as pickles call them: with the content (bytes, or a str and
    its latin-1 codec) or nothing. ``bytes(n)`` would allocate n zero bytes, so a count is refused."""
    if not args:
        return kind()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return kind(args[0])
    if len(args) == 2 and isinstance(args[0], str):
        return kind(_codecs_encode(*args))
    shown = ", ".join(type(arg).__name__ for arg in args[:3])
    raise _Unsafe(f"its pickle calls {kind.__name__}({shown}), which could allocate without bound")


def _bytes(*args: Any) -> bytes:
    return _plain_bytes(bytes, args)


def _bytearray(*args: Any) -> bytearray:
    return _plain_bytes(bytearray, args)


class _Callable(_Frozen):
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
        ("builtins", "bytearray"): _Callable(_bytearray),
        ("builtins", "bytes"): _Callable(_bytes),
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
        shown = _one_line(shown, 200)  # the names come from the file
        if module == "torch" or module.startswith("torch."):
            why = "which this safe reader does not support (only plain dense tensors are)"
        else:
            why = "which would run code"
        raise WeightFileError(f"refusing to load {self._path}: its pickle references {shown}, {why}")

    def persistent_load(self, pid: Any) -> _Storage:
        storage_type, key, numel = _parse_persistent_id(pid)
        storage = self._archive.storages.get(key)
        if storage is None:
            # Untyped storages count bytes; tensors on them bring their own dtype (_rebuild_tensor_v3).
            dtype = storage_type.dtype or self._allowed[("torch", "uint8")]
            info = self._archive.storage_record(key, numel * dtype.itemsize, f"{numel} {dtype.name} elements")
            self._archive.storage_budget.spend(info.file_size, f"storage record data/{key}")
            storage = _Storage(self._archive, key, dtype, info)
            self._archive.storages[key] = storage
        return storage


def _parse_persistent_id(pid: Any) -> tuple[_StorageType, str, int]:
    """(storage type, record key, element count) of torch's ``("storage", type, key, location, numel)``."""
    if isinstance(pid, tuple) and len(pid) == 5:
        typename, storage_type, key, _location, numel = pid
        if isinstance(typename, bytes):
            typename = typename.decode("ascii", "replace")
        # torch names its records 0, 1, 2 ...; a short printable key keeps messages one line.
        key_ok = isinstance(key, str) and 0 < len(key) <= 64 and key.isprintable()
        if (
            typename == "storage"
            and isinstance(storage_type, _StorageType)
            and key_ok
            and isinstance(numel, int)
            and numel >= 0
        ):
            return storage_type, key, numel
    raise _Corrupt(f"unexpected persistent id {_describe(pid)}")


# ----------------------------------------------------------------------------------------------------
# Scanning the pickle's opcodes before anything is unpickled.


class _Value:
    """A value on the scan's stack: only how deeply it nests is known."""

    __slots__ = ("depth",)

    def __init__(self, depth: int) -> None:
        self.depth = depth


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
# Opcodes that add their operands to the object below them and leave that same object on the stack.
_MUTATORS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})


def _opcode_shape(opcode: pickletools.OpcodeInfo) -> tuple[int, int, bool, bool]:
    """(values it takes below a mark, or -1 if it takes no mark; values it takes otherwise; whether
    it mutates the first of them; whether it pushes a result)."""
    before = opcode.stack_before
    below_mark = before.index(pickletools.markobject) if pickletools.markobject in before else -1
    return below_mark, len(before), opcode.name in _MUTATORS, bool(opcode.stack_after)


_SHAPES = {opcode.name: _opcode_shape(opcode) for opcode in pickletools.opcodes}


class _PickleScan:
    """Runs a pickle's opcodes on values that only know their depth, before the real unpickler builds
    anything: the opcode count, memo indices (the C unpickler sizes its memo by the largest) and
    nesting depth are capped, and lengths the data cannot hold are refused, so that neither memory
    nor a recursive C routine such as hashing a deeply nested tuple can run away. Depths of objects
    changed through the memo after being nested are underestimated here; the walk of the result
    checks those."""

    def __init__(self) -> None:
        self.stack: list[_Value] = []
        self.marks: list[int] = []
        self.memo: dict[int, _Value] = {}

    def run(self, data: bytes | bytearray) -> None:
        for count, (opcode, arg, _pos) in enumerate(pickletools.genops(data), 1):
            if count > _MAX_PICKLE_OPS:
                raise _Unsafe(f"its pickle has more than {_MAX_PICKLE_OPS:,} opcodes")
            self.step(opcode.name, arg)

    def step(self, name: str, arg: Any) -> None:
        if name == "MARK":
            self.marks.append(len(self.stack))
        elif name in _MEMO_PUTS:
            index = len(self.memo) if name == "MEMOIZE" else arg
            if not 0 <= index <= _MAX_PICKLE_OPS:
                raise _Unsafe(f"its pickle stores memo entry {_describe(index)}, beyond the reader's limit")
            self.memo[index] = self.stack[self.pop_start(1)]
        elif name in _MEMO_GETS:
            if arg not in self.memo:
                raise _Corrupt(f"its pickle reads memo entry {_describe(arg)}, which was never stored")
            self.stack.append(self.memo[arg])
        elif name == "DUP":
            self.stack.append(self.stack[self.pop_start(1)])
        elif name == "POP" and self.marks and len(self.stack) == self.marks[-1]:
            self.marks.pop()  # as in CPython: a POP right after a MARK drops the mark
        else:
            self.apply(name)

    def apply(self, name: str) -> None:
        below_mark, count, mutator, pushes = _SHAPES[name]
        stack = self.stack
        if below_mark < 0 and count == 0:  # a constant, a global, an empty container ...
            if pushes:
                stack.append(_Value(0))
            return
        if below_mark >= 0:
            if not self.marks:
                raise _Corrupt(f"its pickle's {name} has no mark to work back to")
            count = len(stack) - self.marks.pop() + below_mark
        start = self.pop_start(count)
        operands = stack[start:]
        del stack[start:]
        if mutator:
            result = operands[0]
            result.depth = max([result.depth] + [value.depth + 1 for value in operands[1:]])
        elif pushes:
            result = _Value(1 + max([value.depth for value in operands], default=-1))
        else:
            return
        if result.depth > _MAX_DEPTH:
            raise _Unsafe(f"its pickle nests objects more than {_MAX_DEPTH} levels deep")
        stack.append(result)

    def pop_start(self, count: int) -> int:
        """Index of the lowest of the top ``count`` values, which must lie above the last mark."""
        start = len(self.stack) - count
        if count < 0 or start < (self.marks[-1] if self.marks else 0):
            raise _Corrupt("its pickle takes more values off the stack than it put there")
        return start


# ----------------------------------------------------------------------------------------------------
# Picking the weights out of the unpickled object.


class _Frame:
    """One dict on the path of an iterative walk: its remaining items and whether it holds a tensor."""

    __slots__ = ("mapping", "items", "key", "found")

    def __init__(self, mapping: Mapping[Any, Any], key: Any) -> None:
        self.mapping = mapping
        self.items = iter(mapping.items())
        self.key = key
        self.found = False


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) and len(key) <= 60 and key.isprintable() else _describe(key)


def _path_text(frames: list[_Frame], key: Any) -> str:
    return _one_line(".".join([_key_text(f.key) for f in frames[1:]] + [_key_text(key)]))


def _tensor_holders(root: Any) -> dict[int, bool]:
    """For each dict reachable from ``root`` through dicts (by id): whether it holds a tensor at any
    depth. Walked without recursion, each dict once however often it is referenced; a dict that
    contains itself, or dicts nested past the limit, are refused."""
    holds: dict[int, bool] = {}
    if not isinstance(root, Mapping):
        return holds
    frames, on_path = [_Frame(root, None)], {id(root)}
    while frames:
        frame = frames[-1]
        entry = next(frame.items, None)
        if entry is None:
            frames.pop()
            on_path.discard(id(frame.mapping))
            holds[id(frame.mapping)] = frame.found
            if frames:
                frames[-1].found |= frame.found
            continue
        key, value = entry
        if isinstance(value, np.ndarray):
            frame.found = True
        elif isinstance(value, Mapping):
            if id(value) in on_path:
                raise _Unsafe(f"the dict under {_path_text(frames, key)} contains itself (a reference cycle)")
            if id(value) in holds:
                frame.found |= holds[id(value)]
            elif len(frames) >= _MAX_DEPTH:
                raise _Unsafe(f"its dicts nest more than {_MAX_DEPTH} levels deep")
            else:
                on_path.add(id(value))
                frames.append(_Frame(value, key))
    return holds


def _select_state_dict(obj: Any, holds: dict[int, bool]) -> Any:
    if not isinstance(obj, Mapping):
        return obj
    if any(isinstance(v, np.ndarray) for v in obj.values()):
        return obj  # already a state dict (stray non-tensor entries are skipped when flattening)
    for key in _WRAPPER_KEYS:
        value = obj.get(key)
        if isinstance(value, Mapping) and holds[id(value)]:
            return value
    # The same dict under two keys is one candidate, not two.
    nested = {id(v): v for v in obj.values() if isinstance(v, Mapping) and holds[id(v)]}
    return next(iter(nested.values())) if len(nested) == 1 else obj


def _join_name(prefix: str, key: Any) -> str:
    if (isinstance(key, int) and key.bit_length() <= 64) or isinstance(key, float) or key is None:
        key = str(key)
    if not isinstance(key, str):
        raise _Unsafe(f"a tensor or dict is stored under a {type(key).__name__} key; names must be strings")
    if len(prefix) + 1 + len(key) > _MAX_NAME_CHARS:
        start = _describe(f"{prefix}.{key[:60]}" if prefix else key[:60])
        raise _Unsafe(f"the tensor name starting {start} is longer than {_MAX_NAME_CHARS} characters")
    return f"{prefix}.{key}" if prefix else key


def _flatten(root: Any) -> dict[str, np.ndarray]:
    """name -> tensor, in the file's order; nested dicts give dotted names. Walked without recursion,
    and a dict reached a second time is refused: expanding shared dicts once per path grows
    exponentially with their depth."""
    if isinstance(root, np.ndarray):
        return {"": root}
    out: dict[str, np.ndarray] = {}
    if not isinstance(root, Mapping):
        return out
    seen, stack = {id(root)}, [(iter(root.items()), "")]
    while stack:
        items, prefix = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            continue
        key, value = entry
        if not isinstance(value, (np.ndarray, Mapping)):
            continue  # epoch numbers, hyper-parameters, lists: not weights
        name = _join_name(prefix, key)
        if isinstance(value, np.ndarray):
            if len(out) >= _MAX_TENSORS:
                raise _Unsafe(f"it holds more than {_MAX_TENSORS:,} tensors")
            out[name] = value
        elif id(value) in seen:
            raise _Unsafe(
                f"the dict under {_key_text(name)} is also reached under another name; shared dicts "
                "are not expanded"
            )
        elif len(stack) >= _MAX_DEPTH:
            raise _Unsafe(f"its dicts nest more than {_MAX_DEPTH} levels deep")
        else:
            seen.add(id(value))
            stack.append((iter(value.items()), name))
    return out


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
    truncated or corrupt, holds no tensors, its pickle references anything outside the allow-list
    of tensor-rebuilding functions and plain containers, or it asks for more than the reader's limits
    (sizes, object count, nesting depth, shared or cyclic dicts).
    """
    path = Path(path)
    with _open_zip(path) as zf:
        try:
            tensors = _read_tensors(zf, path)
        except WeightFileError:
            raise
        except _Unsafe as err:
            raise WeightFileError(f"refusing to load {path}: {err}") from None
        except _Corrupt as err:
            raise WeightFileError(f"checkpoint {path} is corrupt or truncated: {err}") from None
        except Exception as err:  # noqa: BLE001 - any failure parsing untrusted bytes means a bad file
            reason = _one_line(f"{type(err).__name__}: {err}")
            raise WeightFileError(f"checkpoint {path} is corrupt or truncated: {reason}") from None
    if not tensors:
        raise WeightFileError(f"checkpoint {path} contains no tensors")
    return tensors


def _read_tensors(zf: zipfile.ZipFile, path: Path) -> dict[str, np.ndarray]:
    prefix = _find_prefix(zf, path)
    big_endian = False  # torch's default when the byteorder record is absent
    if f"{prefix}/byteorder" in zf.namelist():
        order = bytes(_read_small_record(zf, f"{prefix}/byteorder", _MAX_SMALL_RECORD)).strip()
        if order not in (b"little", b"big"):
            raise _Corrupt(f"unknown byteorder record {order[:20]!r}")
        big_endian = order == b"big"
    archive = _Archive(zf, prefix, big_endian)
    data = _read_small_record(zf, f"{prefix}/data.pkl", _MAX_PICKLE_BYTES)
    _PickleScan().run(data)
    obj = _SafeUnpickler(data, archive, path).load()
    return _flatten(_select_state_dict(obj, _tensor_holders(obj)))
