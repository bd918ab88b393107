"""Locate release files (checkpoints, label lists) on disk, or download them into a cache.

Lookup order for :func:`resolve_file`: an explicit path, then ``<dir>/<filename>`` for each
directory named by an environment variable (``$EAT_WEIGHTS_DIR`` by default), then the cache
(:func:`cache_dir`), then a download into the cache. Offline users therefore only need to drop the
files into ``$EAT_WEIGHTS_DIR``; nothing here touches the network or the disk at import time.

Downloads are atomic: the body streams into a temporary file next to the destination and is moved
into place with :func:`os.replace` only after the size and sha256 checks pass, so an interrupted
or corrupt download never leaves a file under the final name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from eat_keras import __version__
from eat_keras.errors import DownloadError, EatKerasError

__all__ = ["cache_dir", "resolve_file", "download", "sha256_of"]

_CHUNK = 1 << 20  # 1 MiB: few syscalls, small memory


def cache_dir() -> Path:
    """Where downloaded files live: ``$EAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/eat-keras``,
    else ``~/.cache/eat-keras``. The directory is not created here (only a download creates it)."""
    env = os.environ.get("EAT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "eat-keras"
    return Path.home() / ".cache" / "eat-keras"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks so large checkpoints do not load into memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return value


def _hint(dest_dir: Path, search_env: Sequence[str]) -> str:
    where = " or ".join(f"${name}" for name in search_env) if search_env else "$EAT_WEIGHTS_DIR"
    return f"put the file in {where} or the cache {dest_dir}"


def _verify_cached(path: Path, sha256: str) -> None:
    """Check a cached file against ``sha256``; a mismatch is reported, never silently used.

    A sidecar ``<file>.sha256`` stamp (hash, size, mtime) records a successful check so a large
    checkpoint is not re-hashed on every run; any change to the file invalidates the stamp.
    """
    try:
        if _stamp_path(path).read_text(encoding="ascii").strip() == _stamp_text(path, sha256):
            return
    except (OSError, UnicodeDecodeError):
        pass
    actual = sha256_of(path)
    if actual != sha256:
        raise DownloadError(
            f"cached file {path} has sha256 {actual}, expected {sha256}; "
            "delete it to download it again"
        )
    _write_stamp(path, sha256)


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp_text(path: Path, sha256: str) -> str:
    st = path.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns}"


def _write_stamp(path: Path, sha256: str) -> None:
    try:
        _stamp_path(path).write_text(_stamp_text(path, sha256) + "\n", encoding="ascii")
    except OSError:
        pass  # a read-only cache still works, it is just re-hashed next time


def resolve_file(
    filename: str,
    url: str,
    sha256: str | None = None,
    explicit: str | os.PathLike[str] | None = None,
    search_env: Sequence[str] = ("EAT_WEIGHTS_DIR",),
    download: bool = True,
) -> Path:
    """Return a local path for a release file, downloading it into the cache if needed.

    Order: (1) ``explicit`` (must exist); (2) ``$VAR/<filename>`` for each ``VAR`` in
    ``search_env`` that is set; (3) ``cache_dir()/<filename>``; (4) download ``url`` into the cache.
    Files from (1) and (2) are used as given (hashing a 300 MB checkpoint on every run would be
    slow; call :func:`sha256_of` yourself if you want to check); files from (3) and (4) are
    verified against ``sha256`` when it is given.

    Raises:
        EatKerasError: ``explicit`` is given but is not an existing file.
        DownloadError: not found and ``download`` is False (the message lists every place
            searched), the download failed, or a cached/downloaded file has the wrong sha256.
    """
    sha = _normalise_sha256(sha256)
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        what = "is a directory, not a file" if path.is_dir() else "file not found"
        raise EatKerasError(f"{path}: {what} (given as the path of {filename})")

    searched: list[str] = []
    for var in search_env:
        value = os.environ.get(var)
        if not value:
            searched.append(f"${var} (not set)")
            continue
        candidate = Path(value).expanduser() / filename
        if candidate.is_file():
            return candidate
        searched.append(f"{candidate} (${var})")

    cache = cache_dir()
    cached = cache / filename
    if cached.is_file():
        if sha is not None:
            _verify_cached(cached, sha)
        return cached
    searched.append(f"{cached} (cache)")

    if not download:
        raise DownloadError(
            f"{filename} not found and downloading is disabled; searched: " + "; ".join(searched)
        )
    _download(url, cached, sha, timeout=60, search_env=search_env)
    if sha is not None:
        _write_stamp(cached, sha)  # just verified while streaming: spare the next run a re-hash
    return cached


def download(
    url: str, dest: str | os.PathLike[str], sha256: str | None = None, timeout: float = 60
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking the size and (if given) the sha256.

    The body streams into ``.<name>.<random>.part`` in ``dest``'s folder and replaces ``dest`` only
    when complete and verified; on any failure the temporary file is removed. Progress goes to
    stderr only when stderr is a terminal, so logs and pipes stay clean.

    Raises:
        DownloadError: network/HTTP error, truncated body, or sha256 mismatch (the message names
            the expected and actual hash).
    """
    return _download(url, Path(dest), _normalise_sha256(sha256), timeout, ("EAT_WEIGHTS_DIR",))


def _download(
    url: str, dest: Path, sha256: str | None, timeout: float, search_env: Sequence[str]
) -> Path:
    dest = Path(dest).expanduser()
    hint = _hint(dest.parent, search_env)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
        # O_EXCL: never clobber anything; mode 0o666 lets the umask decide, like a normal file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise DownloadError(
            f"could not download {url}: cannot write to {dest.parent}: {exc}; {hint}"
        ) from exc

    ok = False
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                digest, received = _stream(url, out, timeout, dest.name, hint)
            except _WriteError as exc:
                raise exc.exc from exc
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            raise DownloadError(
                f"downloaded {url} has sha256 {actual}, expected {sha256} "
                f"({received} bytes); the file was deleted"
            )
        if sha256 is None and dest.suffix == ".pt" and not zipfile.is_zipfile(tmp):
            # no hash to check and maybe no Content-Length: a torch checkpoint is a zip, and a body
            # cut short lacks the zip's end record
            raise DownloadError(
                f"downloaded {url} is not a complete torch checkpoint ({received} bytes, no zip end "
                f"record); the file was deleted; {hint}"
            )
        os.replace(tmp, dest)
        ok = True
        if sha256 is None:  # say what arrived, so the user can pin or compare it
            print(f"eat-keras: note: no pinned sha256 for {dest.name}; downloaded file has sha256 {actual}", file=sys.stderr)
    except OSError as exc:
        raise DownloadError(f"could not download {url}: cannot write {dest}: {exc}; {hint}") from exc
    finally:
        if not ok:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return dest


class _WriteError(Exception):
    """Wraps an OSError from the local file so it is not mistaken for a network error."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.exc = exc


def _stream(url: str, out: BinaryIO, timeout: float, name: str, hint: str) -> tuple[Any, int]:
    """Copy the body of ``url`` into ``out``; return its sha256 object and byte count."""
    digest = hashlib.sha256()
    received = 0
    show = _stderr_is_tty()
    request = urllib.request.Request(url, headers={"User-Agent": f"eat-keras/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length_header = response.headers.get("Content-Length")
            total = int(length_header) if length_header and length_header.isdigit() else None
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _WriteError(exc) from exc
                digest.update(chunk)
                received += len(chunk)
                if show:
                    _progress(name, received, total)
            # http.client may report an early close as a clean EOF: compare with Content-Length.
            if total is not None and received != total:
                raise DownloadError(
                    f"could not download {url}: connection closed after {received} of "
                    f"{total} bytes; {hint}"
                )
    except (DownloadError, _WriteError):
        raise
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}; {hint}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"could not download {url}: {exc.reason}; {hint}") from exc
    except http.client.IncompleteRead as exc:
        raise DownloadError(
            f"could not download {url}: connection closed after {received + len(exc.partial)} "
            f"bytes; {hint}"
        ) from exc
    except (http.client.HTTPException, OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DownloadError(f"could not download {url}: {reason}; {hint}") from exc
    finally:
        if show:
            sys.stderr.write("\n")
            sys.stderr.flush()
    return digest, received


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _progress(name: str, received: int, total: int | None) -> None:
    mb = received / 1e6
    if total:
        text = f"\rdownloading {name}: {mb:.1f}/{total / 1e6:.1f} MB ({100 * received // total}%)"
    else:
        text = f"\rdownloading {name}: {mb:.1f} MB"
    sys.stderr.write(text)
    sys.stderr.flush()
