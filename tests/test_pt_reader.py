"""Tests for the torch-free, code-free checkpoint reader (eat_keras.weights.pt_reader)."""

from __future__ import annotations

import os
import pickle
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from eat_keras.errors import WeightFileError
from eat_keras.weights.pt_reader import read_pt_state_dict

CHECKPOINT = "weights/mn04_as_mAP_432.pt"
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def checkpoint(shared_dir: Path) -> Path:
    path = shared_dir / CHECKPOINT
    if not path.is_file():
        pytest.fail(f"{path} is missing from shared/", pytrace=False)
    return path


def _write_archive(path: Path, records: dict[str, bytes]) -> Path:
    """A zip with torch's layout (records are relative to ``archive/``)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records.items():
            zf.writestr(f"archive/{name}", data)
    return path


def _rewrite_zip(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None]) -> Path:
    """Copy a zip, passing each record through ``edit`` (None drops the record)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
    return dst


# --------------------------------------------------------------------------------------------------
# 1. The real upstream checkpoint.


def test_real_checkpoint_without_torch(checkpoint: Path) -> None:
    sd = read_pt_state_dict(checkpoint)
    assert len(sd) == 312
    assert next(iter(sd)) == "features.0.0.weight"
    assert sd["features.0.0.weight"].shape == (8, 1, 3, 3)
    assert sd["features.0.0.weight"].dtype == np.float32
    assert sd["classifier.5.weight"].shape == (527, 512)
    counters = [k for k in sd if k.endswith("num_batches_tracked")]
    assert counters
    for key in counters:
        assert sd[key].shape == () and sd[key].dtype == np.int64
    n_params = sum(
        v.size for k, v in sd.items() if v.dtype.kind == "f" and not k.endswith(BN_BUFFERS)
    )
    assert n_params == 983_599
    for value in sd.values():
        assert value.flags.c_contiguous and value.flags.owndata and value.flags.writeable


def test_real_checkpoint_matches_torch(checkpoint: Path) -> None:
    torch = pytest.importorskip("torch")
    ref = torch.load(checkpoint, map_location="cpu", weights_only=True)
    sd = read_pt_state_dict(checkpoint)
    assert list(sd) == list(ref)
    for key, tensor in ref.items():
        expected = tensor.numpy()
        assert sd[key].dtype == expected.dtype, key
        assert sd[key].shape == expected.shape, key
        np.testing.assert_array_equal(sd[key], expected, err_msg=key)


# --------------------------------------------------------------------------------------------------
# 2. Round trips through torch.save.


def _expected(tensor) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch

    tensor = tensor.detach()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _assert_same(got: dict[str, np.ndarray], ref: dict) -> None:  # type: ignore[type-arg]
    assert list(got) == list(ref)
    for key, tensor in ref.items():
        expected = _expected(tensor)
        assert got[key].dtype == expected.dtype, key
        assert got[key].shape == expected.shape, key
        np.testing.assert_array_equal(got[key], expected, err_msg=key)


def test_round_trip_dtypes_views_and_wrapper(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "f32": torch.randn(3, 4, generator=gen),
        "f64": torch.randn(5, generator=gen, dtype=torch.float64),
        "f16": torch.randn(2, 3, generator=gen).half(),
        "bf16": torch.randn(7, generator=gen).bfloat16(),
        "i64": torch.arange(-3, 3),
        "i32": torch.arange(-4, 4, dtype=torch.int32).reshape(2, 4),
        "i16": torch.tensor([-300, 0, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 7, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "u16": torch.tensor([1, 65535], dtype=torch.uint16),  # saved via _rebuild_tensor_v3
        "scalar_int": torch.tensor(42),
        "scalar_float": torch.tensor(1.5),
        "transposed_slice": base.t()[1:4],  # non-contiguous, non-zero offset
        "shared_a": base[1],  # same storage as shared_b and transposed_slice
        "shared_b": base[2:, 3:],
        "broadcast": torch.randn(3, 1, generator=gen).expand(3, 4),  # stride 0
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=gen)),
    }
    assert not state["transposed_slice"].is_contiguous()
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": state, "epoch": 7, "best_map": 0.43, "note": b"bytes"}, path)
    got = read_pt_state_dict(path)
    _assert_same(got, state)
    assert got["bf16"].dtype == np.float32


def test_round_trip_module_state_dict(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
    model(torch.randn(2, 1, 7, 7))  # moves BN running stats and num_batches_tracked
    state = model.state_dict()  # an OrderedDict with a _metadata attribute
    path = tmp_path / "module.pt"
    torch.save(state, path)
    _assert_same(read_pt_state_dict(path), state)
    # Other common wrapper key, with an optimizer state that must not leak in.
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 7, 7)).sum().backward()
    opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    _assert_same(read_pt_state_dict(path), model.state_dict())


def test_byteorder_record(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    state = {"a": torch.randn(3, 5), "b": torch.arange(6, dtype=torch.float32)}
    little = tmp_path / "little.pt"
    torch.save(state, little)

    def to_big(name: str, data: bytes) -> bytes:
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:  # every storage here is float32
            return np.frombuffer(data, "<f4").astype(">f4").tobytes()
        return data

    _assert_same(read_pt_state_dict(_rewrite_zip(little, tmp_path / "big.pt", to_big)), state)
    # No byteorder record at all: little-endian, as torch assumes.
    no_mark = _rewrite_zip(
        little, tmp_path / "nomark.pt", lambda n, d: None if n.endswith("/byteorder") else d
    )
    _assert_same(read_pt_state_dict(no_mark), state)


def test_legacy_format_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightFileError, match="legacy"):
        read_pt_state_dict(path)


# --------------------------------------------------------------------------------------------------
# 3. Safety: a pickle that would run code is refused before anything runs. No torch needed.


class _RunsCommand:
    def __init__(self, func: Callable[..., object], arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (self.func, (self.arg,))


def _os_system_literal(command: str) -> bytes:
    """Protocol-2 pickle of ``os.system(command)`` with the global spelled exactly ``os system``."""
    arg = command.encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(arg)) + arg + b"\x85R."


def _evil_archive(tmp_path: Path, payload: bytes) -> Path:
    return _write_archive(
        tmp_path / "evil.pt", {"data.pkl": payload, "version": b"3\n", "byteorder": b"little"}
    )


@pytest.mark.skipif(os.name != "posix", reason="uses the shell's touch")
@pytest.mark.parametrize("how", ["literal", "reduce"])
def test_os_system_is_refused(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    command = f"touch '{marker}'"
    if how == "literal":
        payload = _os_system_literal(command)
    else:  # pickled as posix.system: the message must still say os.system
        payload = pickle.dumps({"w": _RunsCommand(os.system, command)}, protocol=2)
    path = _evil_archive(tmp_path, payload)
    with pytest.raises(WeightFileError, match=r"os\.system") as info:
        read_pt_state_dict(path)
    assert "would run code" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    # The payload is live: plain pickle would have run it (which is why we never use it).
    pickle.loads(payload)
    assert marker.exists()


def test_builtins_eval_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsCommand(eval, f"open({str(marker)!r}, 'w').close()"), protocol=2)
    assert b"__builtin__" in payload  # protocol 2 spells it the Python 2 way
    with pytest.raises(WeightFileError, match=r"builtins\.eval"):
        read_pt_state_dict(_evil_archive(tmp_path, payload))
    assert not marker.exists()
    pickle.loads(payload)
    assert marker.exists()


@pytest.mark.parametrize(
    "global_name", [b"builtins\nexec", b"__builtin__\ngetattr", b"subprocess\nPopen", b"posix\nsystem"]
)
def test_other_code_globals_are_refused(tmp_path: Path, global_name: bytes) -> None:
    payload = b"\x80\x02c" + global_name + b"\nX\x01\x00\x00\x00x\x85R."
    with pytest.raises(WeightFileError, match="refusing to load"):
        read_pt_state_dict(_evil_archive(tmp_path, payload))


def test_unsupported_torch_global_is_refused(tmp_path: Path) -> None:
    payload = b"\x80\x02ctorch._utils\n_rebuild_qtensor\n)R."
    with pytest.raises(WeightFileError, match=r"torch\._utils\._rebuild_qtensor.*not support"):
        read_pt_state_dict(_evil_archive(tmp_path, payload))


# --------------------------------------------------------------------------------------------------
# 4. Damaged or wrong files.


@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_truncated_checkpoint(checkpoint: Path, tmp_path: Path, fraction: float) -> None:
    data = checkpoint.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(WeightFileError, match="truncated") as info:
        read_pt_state_dict(path)
    assert str(path) in str(info.value)


def test_missing_storage_record(checkpoint: Path, tmp_path: Path) -> None:
    path = _rewrite_zip(checkpoint, tmp_path / "hole.pt", lambda n, d: None if n.endswith("/data/7") else d)
    with pytest.raises(WeightFileError, match=r"data/7 is missing"):
        read_pt_state_dict(path)


def test_short_storage_record(checkpoint: Path, tmp_path: Path) -> None:
    path = _rewrite_zip(
        checkpoint, tmp_path / "short.pt", lambda n, d: d[:-4] if n.endswith("/data/0") else d
    )
    with pytest.raises(WeightFileError, match=r"data/0 holds"):
        read_pt_state_dict(path)


def test_corrupt_record_crc(checkpoint: Path, tmp_path: Path) -> None:
    data = bytearray(checkpoint.read_bytes())
    with zipfile.ZipFile(checkpoint) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/0"))
    # Flip a byte inside the stored data (after the 30-byte local header, name and extra field).
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len] ^= 0xFF
    path = tmp_path / "crc.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(WeightFileError, match="corrupt"):
        read_pt_state_dict(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(WeightFileError, match="empty"):
        read_pt_state_dict(path)


def test_random_bytes_are_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightFileError, match="not a zip archive.*legacy"):
        read_pt_state_dict(path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(WeightFileError, match="does not exist"):
        read_pt_state_dict(tmp_path / "nope.pt")


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(WeightFileError, match="data.pkl"):
        read_pt_state_dict(path)


def test_pickle_without_tensors(tmp_path: Path) -> None:
    payload = pickle.dumps({"epoch": 3, "config": {"lr": 0.1}, "tags": {1, 2}}, protocol=2)
    with pytest.raises(WeightFileError, match="no tensors"):
        read_pt_state_dict(_evil_archive(tmp_path, payload))


def test_garbage_pickle(tmp_path: Path) -> None:
    with pytest.raises(WeightFileError, match="corrupt"):
        read_pt_state_dict(_evil_archive(tmp_path, b"\x80\x02}q\x00(X\x01"))


def test_src_never_imports_torch() -> None:
    src = Path(__file__).resolve().parents[1] / "src" / "eat_keras" / "weights" / "pt_reader.py"
    text = src.read_text()
    assert "import torch" not in text and "from torch" not in text
    code = (
        "import sys; from eat_keras.weights.pt_reader import read_pt_state_dict; "
        "assert 'torch' not in sys.modules"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)
