"""AudioSet labels: parsing, lookup through the environment, and a sha-checked download."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from conftest import LoopbackServer
from eat_keras import labels
from eat_keras.errors import DownloadError, EatKerasError



@pytest.fixture
def golden_csv(golden_dir: Path) -> Path:
    return golden_dir / labels.AUDIOSET_LABELS_FILE


@pytest.fixture
def clean_env(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No lookup variables set, an empty cache, and a URL nobody listens on (port 9, discard)."""
    monkeypatch.setattr(labels, "AUDIOSET_LABELS_URL", "http://127.0.0.1:9/labels.csv")
    return empty_cache


# --- parsing --------------------------------------------------------------------------------


def test_golden_csv(golden_csv: Path) -> None:
    names = labels.read_label_csv(golden_csv)
    assert len(names) == 527
    assert names[0] == "Speech"
    assert names[1] == "Male speech, man speaking"  # quoted, comma intact
    assert all(name and name == name.strip() for name in names)
    assert sum("," in name for name in names) > 50


def test_pinned_sha_matches_upstream_copy(golden_csv: Path) -> None:
    assert hashlib.sha256(golden_csv.read_bytes()).hexdigest() == labels.AUDIOSET_LABELS_SHA256


def test_csv_is_ordered_by_index(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text('index,mid,display_name\n1,/m/b,"B, b"\n0,/m/a,A\n2,/m/c,"C ""quoted"""\n')
    assert labels.read_label_csv(path) == ["A", "B, b", 'C "quoted"']


def test_plain_text_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("Speech\nMale speech, man speaking\n\nMusic\n")
    assert labels.read_label_csv(path) == ["Speech", "Male speech, man speaking", "Music"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("index,mid,display_name\n0,/m/a,A\n2,/m/c,C\n", "missing [1]"),
        ("index,mid,display_name\n0,/m/a,A\n0,/m/b,B\n", "twice"),
        ("index,mid,display_name\nx,/m/a,A\n", "not an integer"),
        ("index,mid,display_name\n", "no labels"),
        ("", "no labels"),
    ],
)
def test_bad_label_files(tmp_path: Path, body: str, words: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(EatKerasError, match=r"bad\.csv") as info:
        labels.read_label_csv(path)
    assert words in str(info.value)


def test_missing_label_file(tmp_path: Path) -> None:
    with pytest.raises(EatKerasError, match="nope.csv"):
        labels.read_label_csv(tmp_path / "nope.csv")


# --- lookup ---------------------------------------------------------------------------------


def _copy(golden_csv: Path, folder: Path, name: str = labels.AUDIOSET_LABELS_FILE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(golden_csv, folder / name))


def test_through_weights_dir(
    golden_csv: Path, clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy(golden_csv, tmp_path / "weights")
    monkeypatch.setenv("EAT_WEIGHTS_DIR", str(tmp_path / "weights"))
    names = labels.audioset_labels()
    assert len(names) == 527 and names[0] == "Speech"
    assert not clean_env.exists()  # nothing downloaded or cached


def test_labels_dir_beats_weights_dir(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / labels.AUDIOSET_LABELS_FILE).write_text("from weights\n")
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / labels.AUDIOSET_LABELS_FILE).write_text("from labels dir\n")
    monkeypatch.setenv("EAT_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("EAT_LABELS_DIR", str(tmp_path / "l"))
    assert labels.audioset_labels() == ["from labels dir"]


def test_eat_labels_names_the_file(
    golden_csv: Path, clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _copy(golden_csv, tmp_path / "anywhere", "my_labels.csv")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / labels.AUDIOSET_LABELS_FILE).write_text("should not be used\n")
    monkeypatch.setenv("EAT_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("EAT_LABELS", str(path))
    assert labels.audioset_labels()[0] == "Speech"

    # explicit still wins over $EAT_LABELS
    own = tmp_path / "own.txt"
    own.write_text("a\nb\n")
    assert labels.audioset_labels(own) == ["a", "b"]

    monkeypatch.setenv("EAT_LABELS", str(tmp_path / "gone.csv"))
    with pytest.raises(EatKerasError, match="gone.csv"):
        labels.audioset_labels()


def test_not_found_offline(clean_env: Path) -> None:
    with pytest.raises(DownloadError, match="could not download"):
        labels.audioset_labels()


def test_download_with_real_sha(
    golden_csv: Path,
    clean_env: Path,
    http_server: LoopbackServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, root, requests = http_server.url, http_server.root, http_server.paths
    shutil.copyfile(golden_csv, root / "labels.csv")
    monkeypatch.setattr(labels, "AUDIOSET_LABELS_URL", f"{base}/labels.csv")

    names = labels.audioset_labels()
    assert len(names) == 527 and names[0] == "Speech"
    assert (clean_env / labels.AUDIOSET_LABELS_FILE).read_bytes() == golden_csv.read_bytes()
    assert requests == ["/labels.csv"]

    # Cached on disk and in-process: no second request and no second parse.
    def no_parse(path: object) -> list[str]:
        raise AssertionError("labels were parsed again")

    monkeypatch.setattr(labels, "read_label_csv", no_parse)
    again = labels.audioset_labels()
    assert again == names and again is not names  # callers get their own list
    assert requests == ["/labels.csv"]


def test_download_with_wrong_content_is_rejected(
    clean_env: Path, http_server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = http_server.url, http_server.root
    (root / "labels.csv").write_text("index,mid,display_name\n0,/m/x,Not AudioSet\n")
    monkeypatch.setattr(labels, "AUDIOSET_LABELS_URL", f"{base}/labels.csv")
    with pytest.raises(DownloadError, match=labels.AUDIOSET_LABELS_SHA256):
        labels.audioset_labels()
    assert not (clean_env / labels.AUDIOSET_LABELS_FILE).exists()
