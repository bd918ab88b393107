"""What a hostile ``.pt`` file can make eat_keras.weights.pt_reader allocate, and how deep it can make it
recurse, is bounded: every bomb here is refused with one WeightFileError line naming the file.

The files are crafted by the tests: pickles through a pure-Python pickler that can write any global
and torch's persistent storage ids, or as raw opcodes; zips by hand where a record must declare a size
its data does not have. Cases that would allocate gigabytes (or crash the interpreter) if a defence
broke are loaded in a child process under RLIMIT_DATA and a timeout, which reports its peak RSS.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from cli_process import run_cli

from eat_keras.errors import WeightFileError
from eat_keras.weights import pt_reader
from eat_keras.weights.pt_reader import read_pt_state_dict

MIB = 1 << 20
GIB = 1 << 30
# Well above what the child needs to import numpy and refuse a file, far below any bomb.
CHILD_PEAK_LIMIT = 256 * MIB


# --------------------------------------------------------------------------------------------------
# Crafting checkpoints.


class _Global:
    """Pickled as the GLOBAL opcode ``module name``, whatever that names."""

    def __init__(self, dotted: str) -> None:
        self.module, self.name = dotted.rsplit(".", 1)

    def __call__(self, *args: Any) -> Any:  # save_reduce insists on a callable
        raise AssertionError("never called")


class _Reduce:
    """Pickled as ``GLOBAL func`` + args + REDUCE."""

    def __init__(self, func: str, *args: Any) -> None:
        self.func, self.args = _Global(func), args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


class _StorageRef:
    """Pickled as torch's persistent id ``("storage", torch.<kind>, key, "cpu", numel)``."""

    def __init__(self, key: str, numel: int, kind: str = "FloatStorage") -> None:
        self.key, self.numel, self.kind = key, numel, kind


class _CraftPickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can be extended
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global_marker(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = _save_global_marker

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _StorageRef):
            return ("storage", _Global(f"torch.{obj.kind}"), obj.key, "cpu", obj.numel)
        return None


def _tensor(storage: _StorageRef, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> _Reduce:
    return _Reduce(
        "torch._utils._rebuild_tensor_v2", storage, offset, size, stride, False, collections.OrderedDict()
    )


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _CraftPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _checkpoint(path: Path, pickled: bytes, records: dict[str, bytes] | None = None) -> Path:
    """A torch-layout zip holding ``pickled`` as data.pkl and ``records`` as data/<key>."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pickled)
        zf.writestr("archive/byteorder", b"little")
        for key, data in (records or {}).items():
            zf.writestr(f"archive/data/{key}", data)
    return path


def _raw_zip(path: Path, entries: list[tuple[str, int, int, int, bytes]]) -> Path:
    """A zip written field by field: (name, method, crc, declared size, stored bytes) per record, so a
    record can declare any size and CRC whatever its data inflates to."""
    body, central = bytearray(), bytearray()
    for name, method, crc, size, payload in entries:
        offset, raw_name = len(body), name.encode()
        body += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(payload), size, len(raw_name), 0
        )
        body += raw_name + payload
        central += struct.pack(
            "<4s6H3L5HLL", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(payload), size, len(raw_name),
            0, 0, 0, 0, 0, offset,
        )
        central += raw_name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


def _stored(name: str, data: bytes) -> tuple[str, int, int, int, bytes]:
    return (name, zipfile.ZIP_STORED, zlib.crc32(data), len(data), data)


def _deflated_zeros(mebibytes: int) -> bytes:
    """A raw deflate stream of ``mebibytes`` MiB of zeros, about 1000 times smaller: after a full flush
    the compressor starts afresh, so one compressed MiB can be repeated."""
    chunk, squeeze = bytes(MIB), zlib.compressobj(9, zlib.DEFLATED, -15)
    first = squeeze.compress(chunk) + squeeze.flush(zlib.Z_FULL_FLUSH)
    again = squeeze.compress(chunk) + squeeze.flush(zlib.Z_FULL_FLUSH)
    return first + again * (mebibytes - 1) + squeeze.flush()


def test_deflated_zeros_helper() -> None:
    data = zlib.decompress(_deflated_zeros(8), -15)
    assert data == bytes(8 * MIB)


_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_DATA, ({limit}, {limit}))
from eat_keras.errors import WeightFileError
from eat_keras.weights.pt_reader import read_pt_state_dict
error = None
try:
    read_pt_state_dict(sys.argv[1])
except WeightFileError as err:
    error = str(err)
# VmHWM is this process's own peak; ru_maxrss would include the parent's RSS at fork time.
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({{"error": error, "peak_rss": peak}}))
"""


def _load_in_child(path: Path, timeout: float = 60.0) -> tuple[str, int]:
    """(the WeightFileError's message, peak RSS in bytes) of loading ``path`` in a child process under
    a 2 GiB RLIMIT_DATA; the child must neither crash nor load the file."""
    code = _CHILD.format(limit=2 * GIB)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["error"] is not None, "the bomb was loaded"
    return report["error"], report["peak_rss"]


def _assert_one_line(message: str, path: Path, *fragments: str) -> None:
    assert "\n" not in message and len(message) < 500, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


# --------------------------------------------------------------------------------------------------
# 1. Storage records: sizes are checked before reading, and reads are bounded.


def _zip_bomb(tmp_path: Path, numel: int, mebibytes: int) -> Path:
    """One float storage of ``numel`` elements whose record inflates to ``mebibytes`` MiB of zeros."""
    pickled = _dumps({"w": _tensor(_StorageRef("0", numel), (numel,), (1,))})
    record = ("archive/data/0", zipfile.ZIP_DEFLATED, 0, mebibytes * MIB, _deflated_zeros(mebibytes))
    return _raw_zip(tmp_path / "bomb.pt", [_stored("archive/data.pkl", pickled), record])


def test_zip_bomb_beyond_the_storage_budget(tmp_path: Path) -> None:
    # 3 MiB on disk, 3 GiB inflated, and a tensor that claims all of it: refused before reading.
    path = _zip_bomb(tmp_path, numel=3 * GIB // 4, mebibytes=3 * 1024)
    assert path.stat().st_size < 4 * MIB
    message, peak = _load_in_child(path)
    _assert_one_line(message, path, "refusing to load", "storages read", "limit")
    assert peak < CHILD_PEAK_LIMIT


def test_zip_bomb_larger_than_its_storage(tmp_path: Path) -> None:
    # The pickle asks for 16 floats; the record declares (and holds) 3 GiB: refused unread.
    path = _zip_bomb(tmp_path, numel=16, mebibytes=3 * 1024)
    message, peak = _load_in_child(path)
    _assert_one_line(message, path, "data/0 holds 3221225472 bytes but 16 float32 elements need 64")
    assert peak < CHILD_PEAK_LIMIT


def test_record_inflating_past_its_declared_size(tmp_path: Path) -> None:
    # The record declares 64 bytes (with their CRC) but its data inflates to 64 MiB: zipfile would
    # stop at 64 and accept it; the bounded read notices the data goes on.
    pickled = _dumps({"w": _tensor(_StorageRef("0", 16), (16,), (1,))})
    record = ("archive/data/0", zipfile.ZIP_DEFLATED, zlib.crc32(bytes(64)), 64, _deflated_zeros(64))
    path = _raw_zip(tmp_path / "liar.pt", [_stored("archive/data.pkl", pickled), record])
    with pytest.raises(WeightFileError) as info:
        read_pt_state_dict(path)
    _assert_one_line(str(info.value), path, "corrupt", "inflates to more than its declared 64 bytes")


def test_pickle_record_beyond_its_limit(tmp_path: Path) -> None:
    # data.pkl itself as a zip bomb: 1 GiB of zeros in 1 MiB, refused before it is read.
    record = ("archive/data.pkl", zipfile.ZIP_DEFLATED, 0, GIB, _deflated_zeros(1024))
    path = _raw_zip(tmp_path / "pkl_bomb.pt", [record])
    message, peak = _load_in_child(path)
    _assert_one_line(message, path, "refusing to load", "data.pkl declares 1,073,741,824 bytes")
    assert peak < CHILD_PEAK_LIMIT


# --------------------------------------------------------------------------------------------------
# 2. Tensors: what a view makes the reader copy is budgeted, and views stay inside their storage.


def test_stride_zero_tensor_beyond_the_tensor_budget(tmp_path: Path) -> None:
    # One float, viewed 2^29 times with stride 0: a 2 GiB copy from a file of a few hundred bytes.
    pickled = _dumps({"w": _tensor(_StorageRef("0", 1), (1 << 29,), (0,))})
    path = _checkpoint(tmp_path / "stride0.pt", pickled, {"0": bytes(4)})
    assert path.stat().st_size < 1024
    message, peak = _load_in_child(path)
    _assert_one_line(message, path, "refusing to load", "tensors built", "limit")
    assert peak < CHILD_PEAK_LIMIT


def test_many_stride_zero_tensors_share_one_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each view alone is allowed; together they pass the budget (shrunk here so the test stays small).
    monkeypatch.setattr(pt_reader, "_MAX_TENSOR_BYTES", 4 * MIB)
    storage = _StorageRef("0", 1)
    views = {f"w{i}": _tensor(storage, (MIB // 4,), (0,)) for i in range(5)}  # 1 MiB each
    path = _checkpoint(tmp_path / "views.pt", _dumps(views), {"0": bytes(4)})
    with pytest.raises(WeightFileError) as info:
        read_pt_state_dict(path)
    _assert_one_line(str(info.value), path, "tensors built", "4,194,304")
    del views["w4"]  # four fit exactly
    assert len(read_pt_state_dict(_checkpoint(tmp_path / "four.pt", _dumps(views), {"0": bytes(4)}))) == 4


@pytest.mark.parametrize(
    ("size", "stride", "offset", "fragment"),
    [
        ((4,), (2,), 0, "has 4 elements but a tensor of size (4,), stride (2,), offset 0 needs 7"),
        ((2,), (1,), 3, "needs 5"),
        ((2,), (-1,), 1, "not a tuple of non-negative integers"),
        ((2, GIB + 1), (0, 0), 0, "limits on dimensions"),
        ((1,) * 40, (0,) * 40, 0, "limits on dimensions"),
    ],
)
def test_views_outside_their_storage(
    tmp_path: Path, size: tuple[int, ...], stride: tuple[int, ...], offset: int, fragment: str
) -> None:
    pickled = _dumps({"w": _tensor(_StorageRef("0", 4), size, stride, offset)})
    path = _checkpoint(tmp_path / "view.pt", pickled, {"0": bytes(16)})
    with pytest.raises(WeightFileError) as info:
        read_pt_state_dict(path)
    _assert_one_line(str(info.value), path, fragment)


def test_any_stride_of_a_length_one_dimension_is_fine(tmp_path: Path) -> None:
    # torch leaves arbitrary strides on dimensions of length one; they take no step.
    pickled = _dumps({"w": _tensor(_StorageRef("0", 4), (1, 4), (1 << 70, 1))})
    path = _checkpoint(tmp_path / "ok.pt", pickled, {"0": struct.pack("<4f", 1, 2, 3, 4)})
    assert read_pt_state_dict(path)["w"].tolist() == [[1, 2, 3, 4]]


# --------------------------------------------------------------------------------------------------
# 3. The pickle: allocation through allowed callables, object count, memo size, depth, sharing, cycles.


@pytest.mark.parametrize("kind", ["bytearray", "bytes"])
def test_bytes_of_a_count_is_refused(tmp_path: Path, kind: str) -> None:
    # 2 GiB of zeros, twice, from a pickle of a few hundred bytes.
    pickled = _dumps({"a": _Reduce(f"builtins.{kind}", 2 * GIB), "b": _Reduce(f"builtins.{kind}", 2 * GIB)})
    path = _checkpoint(tmp_path / f"{kind}.pt", pickled)
    assert path.stat().st_size < 1024
    message, peak = _load_in_child(path)
    _assert_one_line(message, path, "refusing to load", f"calls {kind}(int), which could allocate")
    assert peak < CHILD_PEAK_LIMIT


def test_bytes_as_pickles_write_them_still_load(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "bytes.pt"
    torch.save({"w": torch.ones(2), "blob": bytearray(b"\x00\xffab"), "raw": b"\x01\x02", "empty": b""}, path)
    assert list(read_pt_state_dict(path)) == ["w"]


def test_opcode_flood_is_refused(tmp_path: Path) -> None:
    # 30 million empty dicts (about 2 GiB of objects) from a 30 MiB pickle.
    pickled = b"\x80\x02(" + b"}" * 30_000_000 + b"l."
    path = _checkpoint(tmp_path / "flood.pt", pickled)
    message, peak = _load_in_child(path)
    _assert_one_line(message, path, "refusing to load", "more than 1,000,000 opcodes")
    assert peak < CHILD_PEAK_LIMIT


def test_huge_memo_index_is_refused(tmp_path: Path) -> None:
    # The C unpickler sizes its memo table by the largest index stored: 2^31 would take 32 GiB.
    pickled = b"\x80\x02}r" + struct.pack("<I", 1 << 31) + b"."
    path = _checkpoint(tmp_path / "memo.pt", pickled)
    message, peak = _load_in_child(path)
    _assert_one_line(message, path, "refusing to load", "memo entry 2147483648")
    assert peak < CHILD_PEAK_LIMIT


def test_deeply_nested_tuple_key_is_refused_before_hashing(tmp_path: Path) -> None:
    # Hashing a tuple nested a million deep overflows the C stack (a segfault, not an exception).
    pickled = b"\x80\x02}" + b")" + b"\x85" * 1_000_000 + b"K\x01s."
    path = _checkpoint(tmp_path / "deep_tuple.pt", pickled)
    message, _peak = _load_in_child(path)
    _assert_one_line(message, path, "refusing to load", "nests objects more than 100 levels deep")


def test_deeply_nested_dict_is_refused(tmp_path: Path) -> None:
    # {"k": {"k": ... }} 100,000 deep (pickle.dumps itself cannot write it).
    depth = 100_000
    pickled = b"\x80\x02" + b"}X\x01\x00\x00\x00k" * depth + b"}" + b"s" * depth + b"."
    path = _checkpoint(tmp_path / "deep.pt", pickled)
    with pytest.raises(WeightFileError) as info:
        read_pt_state_dict(path)
    _assert_one_line(str(info.value), path, "refusing to load", "nests objects more than 100 levels deep")


def test_dicts_nested_deep_through_the_memo_are_refused(tmp_path: Path) -> None:
    # Every dict is created empty and linked to the next one later, through the memo: the opcode
    # scan sees depth 1 everywhere, the walk of the result sees 5,000.
    depth = 5000
    def get(i: int) -> bytes:
        return b"j" + struct.pack("<I", i)

    ops = [b"\x80\x02}q\x00"]  # dict 0, memo 0
    ops += [b"}r" + struct.pack("<I", i) + b"0" for i in range(1, depth)]  # dict i, memo i, popped
    # dict i["k"] = dict i+1, then pop dict i
    ops += [get(i) + b"X\x01\x00\x00\x00k" + get(i + 1) + b"s0" for i in range(depth - 1)]
    ops.append(b"h\x00.")
    path = _checkpoint(tmp_path / "memo_deep.pt", b"".join(ops))
    with pytest.raises(WeightFileError) as info:
        read_pt_state_dict(path)
    _assert_one_line(str(info.value), path, "refusing to load", "dicts nest more than 100 levels deep")


def test_dict_dag_is_not_expanded(tmp_path: Path) -> None:
    # d[k+1] = {"a": d[k], "b": d[k]}, 40 levels: about 1 KiB pickled, 2^40 names if expanded.
    level: Any = {"w": _tensor(_StorageRef("0", 1), (1,), (1,))}
    for _ in range(40):
        level = {"a": level, "b": level}
    path = _checkpoint(tmp_path / "dag.pt", _dumps(level), {"0": bytes(4)})
    assert path.stat().st_size < 4096
    message, peak = _load_in_child(path, timeout=30)
    _assert_one_line(message, path, "refusing to load", "also reached under another name", "not expanded")
    assert peak < CHILD_PEAK_LIMIT


def test_shared_tensors_and_a_state_dict_under_two_keys_still_load(tmp_path: Path) -> None:
    # Tied weights (one tensor, two names) are fine, and so is one state dict kept under two keys.
    torch = pytest.importorskip("torch")
    tied = torch.arange(4.0)
    state = {"enc.weight": tied, "dec.weight": tied}
    path = tmp_path / "tied.pt"
    torch.save({"first": state, "second": state}, path)
    got = read_pt_state_dict(path)
    assert list(got) == ["enc.weight", "dec.weight"]
    assert got["dec.weight"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("with_tensor", [True, False])
def test_cyclic_dict_is_refused(tmp_path: Path, with_tensor: bool) -> None:
    cyclic: dict[str, Any] = {"w": _tensor(_StorageRef("0", 1), (1,), (1,))} if with_tensor else {}
    cyclic["inner"] = {"me": cyclic}
    path = _checkpoint(tmp_path / "cycle.pt", _dumps(cyclic), {"0": bytes(4)})
    with pytest.raises(WeightFileError) as info:
        read_pt_state_dict(path)
    _assert_one_line(str(info.value), path, "refusing", "inner.me contains itself (a reference cycle)")


def test_torch_saved_cycle_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    state: dict[str, Any] = {"w": torch.ones(3)}
    state["self"] = state
    path = tmp_path / "torch_cycle.pt"
    torch.save(state, path)
    with pytest.raises(WeightFileError, match="reference cycle"):
        read_pt_state_dict(path)


def test_long_names_and_odd_keys_are_refused(tmp_path: Path) -> None:
    tensor = _tensor(_StorageRef("0", 1), (1,), (1,))
    path = _checkpoint(tmp_path / "long.pt", _dumps({"x" * 2000: tensor}), {"0": bytes(4)})
    with pytest.raises(WeightFileError) as info:
        read_pt_state_dict(path)
    _assert_one_line(str(info.value), path, "longer than 1024 characters")
    path = _checkpoint(tmp_path / "tuple_key.pt", _dumps({("a", "b"): tensor}), {"0": bytes(4)})
    with pytest.raises(WeightFileError, match="stored under a tuple key"):
        read_pt_state_dict(path)


def test_setting_state_on_a_torch_stand_in_is_refused(tmp_path: Path) -> None:
    # BUILD on torch.float32 with the slot state {"itemsize": 1}: the stand-ins take no state from
    # the file (a plain __slots__ object would let BUILD set the slot).
    pickled = b"\x80\x02ctorch\nfloat32\nN}X\x08\x00\x00\x00itemsizeK\x01s\x86b."
    path = _checkpoint(tmp_path / "build.pt", pickled)
    with pytest.raises(WeightFileError) as info:
        read_pt_state_dict(path)
    _assert_one_line(str(info.value), path, "corrupt", "set the state of a TorchDtype")


def test_multiline_error_text_becomes_one_line(tmp_path: Path) -> None:
    # A newline byte where an opcode should be: the message quotes it, and must stay one line.
    path = _checkpoint(tmp_path / "nl.pt", b"\x80\x02\n")
    with pytest.raises(WeightFileError) as info:
        read_pt_state_dict(path)
    _assert_one_line(str(info.value), path, "corrupt")


# --------------------------------------------------------------------------------------------------
# 4. Through the command line: exit status 2, one error line, bounded memory.


def test_convert_refuses_a_zip_bomb(tmp_path: Path) -> None:
    bomb = _zip_bomb(tmp_path, numel=3 * GIB // 4, mebibytes=3 * 1024)
    result = run_cli(["convert", str(bomb), "--out", str(tmp_path / "out")], timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.error_lines) == 1, result.stderr[-2000:]
    assert "refusing to load" in result.error_lines[0] and str(bomb) in result.error_lines[0]
    assert "Traceback" not in result.stderr
    # TensorFlow's import alone is about 0.66 GB; the 3 GiB record must not be read.
    assert result.peak_rss_bytes < GIB
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
