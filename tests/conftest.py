"""Shared fixtures: where ../shared is, and the reference data read from it (session-scoped). Models
are shared per test module (module- or session-scoped fixtures there), never rebuilt per test.

The read-only reference material (golden outputs, checkpoints, audio) lives in ``../shared`` next to
the clone, or wherever ``$EAT_SHARED_DIR`` points. On a user's fresh clone it is absent and the tests
that need it skip with a reason; under ``CI=true`` a missing ``shared/`` is an error.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared_data import find_shared_dir


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    found = find_shared_dir()
    if found is None:
        reason = "../shared (or $EAT_SHARED_DIR) with golden/ is not present next to this clone"
        if _in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    return shared_dir / "golden"


CLIPS = ("metro_station-paris", "music", "speech", "typing")


@pytest.fixture(scope="session")
def golden_logmel(golden_dir: Path):
    """``{key: [1, 128, T, 1]}`` NHWC golden log-mel for every clip, 10 s and 2 s keys."""
    import numpy as np

    mels = {}
    for clip in CLIPS:
        for key in (clip, f"{clip}_2s"):
            mels[key] = np.load(golden_dir / "clips" / f"{key}_logmel.npy")[:, 0, :, :, None]
    return mels


@pytest.fixture(scope="session")
def golden_waveforms(golden_dir: Path):
    """``{clip: float32 [N]}`` 32 kHz waveforms exactly as upstream inference loads them."""
    import numpy as np

    return {clip: np.load(golden_dir / "clips" / f"{clip}_wav32k.npy") for clip in CLIPS}


@dataclass
class LoopbackServer:
    url: str
    root: Path
    paths: list[str] = field(default_factory=list)  # every request path, to count downloads


class _LoopbackHandler(http.server.SimpleHTTPRequestHandler):
    """Serves ``root``. ``/short/<file>`` promises 1000 more bytes than it sends, ``/cut/<file>``
    sends half of the file and closes the socket, and ``/unsized/<file>`` does the same without a
    Content-Length: connections that die mid-download."""

    state: LoopbackServer

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.state.paths.append(self.path)
        kind, _, name = self.path.lstrip("/").partition("/")
        if kind in ("short", "cut", "unsized"):
            body = (self.state.root / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if kind != "unsized":
                self.send_header("Content-Length", str(len(body) + (1000 if kind == "short" else 0)))
            self.end_headers()
            self.wfile.write(body if kind == "short" else body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[LoopbackServer]:
    """A real HTTP server on 127.0.0.1 (random port) serving a tmp folder, for download tests."""
    root = tmp_path / "www"
    root.mkdir()
    state = LoopbackServer(url="", root=root)
    handler = type("Handler", (_LoopbackHandler,), {"state": state})

    def make(*args, **kwargs):  # type: ignore[no-untyped-def]
        return handler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# every variable that steers where eat-keras looks for release files
LOOKUP_ENV_VARS = ("EAT_CACHE_DIR", "XDG_CACHE_HOME", "EAT_WEIGHTS_DIR", "EAT_LABELS_DIR", "EAT_LABELS")


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No lookup variable set; the cache is an empty tmp folder (not yet created)."""
    for var in LOOKUP_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "cache"
    monkeypatch.setenv("EAT_CACHE_DIR", str(path))
    return path
