"""hub: file resolution order, cache verification, and atomic downloads from a loopback server."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest

from conftest import LOOKUP_ENV_VARS, LoopbackServer
from eat_keras import hub
from eat_keras.errors import DownloadError, EatKerasError



def _zip_payload() -> bytes:
    """A stand-in checkpoint: torch .pt files are zips (fixed timestamp: same bytes every run)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo("archive/data.pkl", (2024, 1, 1, 0, 0, 0)), b"release file body\n" * 5000)
    return buffer.getvalue()


PAYLOAD = _zip_payload()  # ~90 kB: several reads
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server(http_server: LoopbackServer) -> LoopbackServer:
    return http_server


@pytest.fixture
def cache(empty_cache: Path) -> Path:
    return empty_cache


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- cache_dir / sha256_of ------------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in LOOKUP_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "eat-keras"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "eat-keras"
    monkeypatch.setenv("EAT_CACHE_DIR", str(tmp_path / "explicit"))
    assert hub.cache_dir() == tmp_path / "explicit"
    assert not (tmp_path / "explicit").exists()  # asking does not create anything


def test_sha256_of(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert hub.sha256_of(path) == PAYLOAD_SHA


# --- downloads ------------------------------------------------------------------------------


def test_download_into_cache_with_sha(
    server: LoopbackServer, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (server.root / "model.pt").write_bytes(PAYLOAD)
    url = f"{server.url}/model.pt"
    path = hub.resolve_file("model.pt", url, sha256=PAYLOAD_SHA)
    assert path == cache / "model.pt"
    assert path.read_bytes() == PAYLOAD
    assert server.paths == ["/model.pt"]
    assert capsys.readouterr().err == ""  # stderr is not a TTY under pytest: no progress
    # Only the file and its verification stamp remain: no temporary files.
    assert _leftovers(cache) == ["model.pt", "model.pt.sha256"]

    # Second call: served from the cache, no new request, and no re-hash thanks to the stamp.
    def no_hashing(path: object) -> str:
        raise AssertionError("a verified cache file was hashed again")

    monkeypatch.setattr(hub, "sha256_of", no_hashing)
    assert hub.resolve_file("model.pt", url, sha256=PAYLOAD_SHA) == path
    assert server.paths == ["/model.pt"]


def test_download_function_without_sha(
    server: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (server.root / "a.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "deep" / "dir" / "a.bin"
    assert hub.download(f"{server.url}/a.bin", dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["a.bin"]
    # unpinned files are accepted, and their hash is shown so that it can be pinned
    assert f"no pinned sha256 for a.bin; downloaded file has sha256 {PAYLOAD_SHA}" in capsys.readouterr().err


def test_wrong_sha_deletes_download(server: LoopbackServer, cache: Path) -> None:
    (server.root / "model.pt").write_bytes(PAYLOAD)
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        hub.resolve_file("model.pt", f"{server.url}/model.pt", sha256=wrong)
    message = str(info.value)
    assert wrong in message and PAYLOAD_SHA in message
    assert _leftovers(cache) == []  # neither the final name nor a .part file


def test_wrong_sha_keeps_existing_destination(server: LoopbackServer, tmp_path: Path) -> None:
    """A failed download never touches a file already under the final name."""
    (server.root / "a.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"old")
    with pytest.raises(DownloadError):
        hub.download(f"{server.url}/a.bin", dest, sha256="1" * 64)
    assert dest.read_bytes() == b"old"
    assert _leftovers(tmp_path) == ["a.bin", "www"]


def test_404(server: LoopbackServer, cache: Path) -> None:
    url = f"{server.url}/missing.pt"
    with pytest.raises(DownloadError) as info:
        hub.resolve_file("missing.pt", url)
    message = str(info.value)
    assert url in message and "404" in message
    assert "$EAT_WEIGHTS_DIR" in message and str(cache) in message
    assert "\n" not in message
    assert _leftovers(cache) == []


def test_connection_refused(cache: Path) -> None:
    # Bind and close a socket to get a port with (almost certainly) nothing listening.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.pt"
    with pytest.raises(DownloadError, match="could not download"):
        hub.resolve_file("x.pt", url, sha256=PAYLOAD_SHA)
    assert _leftovers(cache) == []


@pytest.mark.parametrize("kind", ["short", "cut", "unsized"])
def test_interrupted_download_leaves_no_file(server: LoopbackServer, cache: Path, kind: str) -> None:
    """Content-Length larger than the body, a socket closed mid-body, or (no Content-Length, no
    pinned hash) a checkpoint cut short, caught by its missing zip end record: no final file."""
    with pytest.raises(DownloadError, match="could not download|not a complete torch checkpoint"):
        (server.root / "model.pt").write_bytes(PAYLOAD)
        hub.resolve_file("model.pt", f"{server.url}/{kind}/model.pt")  # no sha: size check alone
    assert _leftovers(cache) == []


# --- resolution order -----------------------------------------------------------------------


def test_resolution_order(
    server: LoopbackServer, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """explicit > $EAT_WEIGHTS_DIR > cache > download."""
    (server.root / "w.pt").write_bytes(PAYLOAD)
    url = f"{server.url}/w.pt"

    # Nothing local: downloaded.
    assert hub.resolve_file("w.pt", url) == cache / "w.pt"
    assert len(server.paths) == 1

    # Cache beats download.
    assert hub.resolve_file("w.pt", url) == cache / "w.pt"
    assert len(server.paths) == 1

    # Env dir beats cache; env dirs are used as given (not hashed: the wrong sha is ignored).
    env_dir = tmp_path / "weights"
    env_dir.mkdir()
    (env_dir / "w.pt").write_bytes(b"env copy")
    monkeypatch.setenv("EAT_WEIGHTS_DIR", str(env_dir))
    assert hub.resolve_file("w.pt", url, sha256="2" * 64) == env_dir / "w.pt"

    # Several env vars: the first that holds the file wins; an unset/missing one is skipped.
    other = tmp_path / "other"
    other.mkdir()
    (other / "w.pt").write_bytes(b"other")
    monkeypatch.setenv("EAT_LABELS_DIR", str(other))
    assert hub.resolve_file("w.pt", url, search_env=("NOT_SET_VAR", "EAT_LABELS_DIR",
                                                     "EAT_WEIGHTS_DIR")) == other / "w.pt"

    # Explicit beats everything, also used as given.
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"mine")
    assert hub.resolve_file("w.pt", url, sha256="2" * 64, explicit=mine) == mine
    assert len(server.paths) == 1


def test_explicit_missing_is_an_error(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(EatKerasError, match="not found") as info:
        hub.resolve_file("w.pt", "http://127.0.0.1:9/w.pt", explicit=tmp_path / "nope.pt")
    assert "nope.pt" in str(info.value)
    with pytest.raises(EatKerasError, match="directory"):
        hub.resolve_file("w.pt", "http://127.0.0.1:9/w.pt", explicit=tmp_path)


def test_no_download_lists_searched_places(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EAT_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(DownloadError) as info:
        hub.resolve_file(
            "w.pt", "http://127.0.0.1:9/w.pt", search_env=("EAT_WEIGHTS_DIR", "EAT_LABELS_DIR"),
            download=False,
        )
    message = str(info.value)
    assert str(tmp_path / "weights" / "w.pt") in message
    assert "$EAT_LABELS_DIR (not set)" in message
    assert str(cache / "w.pt") in message
    assert not cache.exists()


def test_cached_file_with_wrong_sha_is_reported(server: LoopbackServer, cache: Path) -> None:
    cache.mkdir()
    (cache / "w.pt").write_bytes(b"tampered")
    (server.root / "w.pt").write_bytes(PAYLOAD)
    with pytest.raises(DownloadError) as info:
        hub.resolve_file("w.pt", f"{server.url}/w.pt", sha256=PAYLOAD_SHA)
    message = str(info.value)
    assert str(cache / "w.pt") in message and PAYLOAD_SHA in message
    assert hashlib.sha256(b"tampered").hexdigest() in message
    assert server.paths == []  # reported, not silently replaced either


def test_cache_stamp_is_invalidated_by_changes(server: LoopbackServer, cache: Path) -> None:
    (server.root / "w.pt").write_bytes(PAYLOAD)
    path = hub.resolve_file("w.pt", f"{server.url}/w.pt", sha256=PAYLOAD_SHA)
    st = path.stat()
    path.write_bytes(PAYLOAD[:-1] + b"X")  # same size, new content...
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # ...and a new mtime
    with pytest.raises(DownloadError, match="expected"):
        hub.resolve_file("w.pt", f"{server.url}/w.pt", sha256=PAYLOAD_SHA)


def test_bad_sha_argument(cache: Path) -> None:
    with pytest.raises(ValueError):
        hub.resolve_file("w.pt", "http://127.0.0.1:9/w.pt", sha256="abc")


def test_progress_only_on_a_tty(
    server: LoopbackServer, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (server.root / "p.bin").write_bytes(PAYLOAD)
    monkeypatch.setattr(hub, "_stderr_is_tty", lambda: True)
    hub.resolve_file("p.bin", f"{server.url}/p.bin")
    captured = capsys.readouterr()
    assert "downloading p.bin" in captured.err and "100%" in captured.err
    assert captured.out == ""
