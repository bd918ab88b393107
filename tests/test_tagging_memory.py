"""``tag`` with bounded memory: header bombs refused before decoding, long files only in windows, the
window and hop within limits, and long files at any rate streamed window by window.

The CLI cases run ``eat-keras`` in a child process under a hard memory limit (``cli_process``): a
bomb that got past the checks would end there in a MemoryError traceback instead of one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_files import flac_claiming_frames, sparse_wav, wav_with_rate
from cli_process import DEFAULT_LIMIT_BYTES, MIB, run_cli
from eat_keras.audio import SAMPLE_RATE, load_audio
from eat_keras.errors import AudioError, EatKerasError
from eat_keras.tagging import (
    MAX_BATCH_SECONDS,
    MAX_INPUT_SECONDS,
    MIN_HOP_SECONDS,
    open_for_tagging,
    tag_with,
    window_samples,
    window_starts,
)

SR = SAMPLE_RATE


def _scores(batch: np.ndarray) -> np.ndarray:
    """A "model" that sees every sample of each window."""
    return np.stack([batch.mean(axis=1), batch.std(axis=1)], axis=1)


# --- windows and hops --------------------------------------------------------------------------


def test_window_and_hop_limits() -> None:
    assert window_samples(MAX_INPUT_SECONDS, MIN_HOP_SECONDS, SR) == (MAX_INPUT_SECONDS * SR, MIN_HOP_SECONDS * SR)
    with pytest.raises(EatKerasError, match=f"windows are limited to {MAX_INPUT_SECONDS:g} s"):
        window_samples(MAX_INPUT_SECONDS + 1, None, SR)
    window_samples(MAX_INPUT_SECONDS + 1, None, SR, fixed_window=True)  # an artifact's own window
    with pytest.raises(EatKerasError, match=f"hop must be at least {MIN_HOP_SECONDS:g} s .*; got 3.125e-05 s"):
        window_samples(10, 1 / SR, SR)  # one sample: 288k windows of a 10 s clip
    with pytest.raises(EatKerasError, match="hop must be at least"):
        window_samples(10, MIN_HOP_SECONDS * 0.99, SR)


@pytest.mark.parametrize(("n", "window", "hop"), [(100, 10, 10), (100, 10, 3), (101, 10, 7), (5, 10, 3), (10, 10, 1)])
def test_window_starts_cover_the_signal_as_before_when_windows_overlap_or_touch(n: int, window: int, hop: int) -> None:
    """hop <= window: starts every hop until a window reaches the end (upstream's count)."""
    import math

    expected = [0] if n <= window else [i * hop for i in range(math.ceil((n - window) / hop) + 1)]
    assert list(window_starts(n, window, hop)) == expected


def test_no_window_starts_past_the_end() -> None:
    """A hop longer than the window skips audio, but never yields a window of padding alone, and a
    hop of 1e8 s gives the one window at the start, without a list of starts in memory."""
    assert list(window_starts(100, 10, 60)) == [0, 60]
    assert list(window_starts(100, 10, 95)) == [0, 95]
    huge = window_starts(10 * SR, SR, 10**8 * SR)
    assert list(huge) == [0]
    assert isinstance(window_starts(10**15, 10, 10), range)  # 1e14 windows, no memory
    x = np.ones(10 * SR, np.float32)
    results = tag_with(_scores, ["mean", "std"], SR, x, 1, 1.0, 1e8)
    assert [(r.start, r.end) for r in results] == [(0.0, 1.0)]


def test_a_batch_holds_a_bounded_length_of_audio() -> None:
    """Long windows go through the model fewer at a time: the model's memory follows the batch."""
    seen: list[int] = []

    def scores(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape[0] * batch.shape[1])
        return _scores(batch)

    x = np.zeros(200 * SR, np.float32)
    for window_s, per_batch in [(10.0, 8), (30.0, 2), (60.0, 1)]:
        seen.clear()
        results = tag_with(scores, ["mean", "std"], SR, x, 1, window_s, window_s / 2)
        assert max(seen) == per_batch * window_s * SR <= MAX_BATCH_SECONDS * SR
        assert len(results) == len(window_starts(len(x), int(window_s * SR), int(window_s * SR / 2)))


# --- whole-file tagging --------------------------------------------------------------------------


def test_whole_file_tagging_refuses_a_long_file_from_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import eat_keras.tagging

    def no_decoding(*args, **kwargs):
        raise AssertionError("the file was opened for decoding")

    monkeypatch.setattr(eat_keras.tagging, "open_audio", no_decoding)
    path = sparse_wav(tmp_path / "two_hours.wav", 44100, 7200.0)
    with pytest.raises(AudioError) as info:
        with open_for_tagging(str(path), SR, windowed=False):
            pass
    assert str(info.value) == (
        f"{path} is 2 h long: whole-file tagging is limited to {MAX_INPUT_SECONDS:g} s; "
        "tag it in windows with --window 10"
    )


def test_whole_file_tagging_reads_a_streamed_file_whole(tmp_path: Path) -> None:
    """A short file streamed for its many channels (see open_audio) is handed over as one array."""
    path = tmp_path / "short_8ch.wav"
    rng = np.random.default_rng(0)
    sf.write(path, (rng.standard_normal((8 * 48000, 8)) * 0.1).astype(np.float32), 48000, subtype="FLOAT")
    with open_for_tagging(str(path), SR, windowed=False) as waveform:
        assert isinstance(waveform, np.ndarray)
        np.testing.assert_array_equal(waveform, load_audio(path))


# --- the CLI under a memory limit ----------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_env(shared_dir: Path) -> dict[str, str]:
    return {
        "EAT_WEIGHTS_DIR": str(shared_dir / "weights"),
        "EAT_LABELS": str(shared_dir / "golden" / "class_labels_indices.csv"),
    }


def _bad_files(tmp: Path) -> dict[str, str]:
    """file → words its one error line must hold."""
    ogg = tmp / "src.ogg"
    sf.write(ogg, (np.random.default_rng(1).standard_normal(4 * SR) * 0.1).astype(np.float32), SR, format="OGG")
    (tmp / "half.ogg").write_bytes(ogg.read_bytes()[: ogg.stat().st_size // 2])
    wav = tmp / "src.wav"
    sf.write(wav, np.zeros(4 * SR, np.float32), SR, subtype="PCM_16")
    (tmp / "half.wav").write_bytes(wav.read_bytes()[: wav.stat().st_size // 2])
    os.mkfifo(tmp / "fifo.wav")
    os.symlink(tmp / "loop_b.wav", tmp / "loop_a.wav")
    os.symlink(tmp / "loop_a.wav", tmp / "loop_b.wav")
    files = {
        wav_with_rate(tmp / "rate1_200k.wav", 1, 200_000): "implausible sample rate 1 Hz",
        wav_with_rate(tmp / "rate1_2m.wav", 1, 2_000_000): "implausible sample rate 1 Hz",
        flac_claiming_frames(tmp / "bomb.flac", (1 << 36) - 1): "claims 68719476735 frames",
        tmp / "half.wav": "truncated",
        tmp / "half.ogg": "truncated",
        tmp / "fifo.wav": "not a regular file",
        tmp / "loop_a.wav": "symbolic link loop",
        sparse_wav(tmp / "two_hours.wav", SR, 7200.0): "2 h long: whole-file tagging is limited to",
    }
    return {str(path): words for path, words in files.items()}


@pytest.mark.slow
def test_bad_files_get_one_line_each_under_a_memory_limit_and_the_good_ones_are_tagged(
    tmp_path: Path, shared_dir: Path, keras_env: dict[str, str]
) -> None:
    """The memory bombs of the issue (1 Hz WAVs of 200 KB and 2 MB, a FLAC claiming 2^36 frames),
    files cut in half, a FIFO, a symlink loop and a 2-hour file without --window: one line each,
    exit status 1, the good files around them tagged, well under the hard memory limit."""
    bad = _bad_files(tmp_path)
    good = [str(shared_dir / "audio" / "typing.wav"), str(shared_dir / "audio" / "speech.wav")]
    files = list(bad)
    files.insert(3, good[0])
    files.append(good[1])
    result = run_cli(["tag", *files, "--model", "mn04_as", "--top-k", "2"], keras_env, timeout=240)
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(result.error_lines) == len(bad), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for path, words in bad.items():
        (line,) = [e for e in result.error_lines if f"{path}:" in e or f"{path} is" in e]
        assert words in line, line
    tagged = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert tagged == good
    assert "Computer keyboard" in result.stdout and "Speech" in result.stdout
    assert result.peak_rss_bytes < DEFAULT_LIMIT_BYTES, f"{result.peak_rss_mib:.0f} MiB"


@pytest.mark.slow
def test_a_one_sample_hop_is_refused_in_one_line(shared_dir: Path, keras_env: dict[str, str]) -> None:
    audio = str(shared_dir / "audio" / "typing.wav")
    result = run_cli(["tag", audio, "--model", "mn04_as", "--window", "10", "--hop", "0.00003125"], keras_env)
    assert result.returncode == 2
    assert result.error_lines == [
        f"eat-keras: error: the hop must be at least {MIN_HOP_SECONDS:g} s (ten windows per second of audio); "
        "got 3.125e-05 s"
    ], result.stderr[-2000:]
    assert result.stdout == ""


@pytest.mark.slow
def test_two_hours_at_44k_in_windows_take_no_more_memory_than_a_minute(
    tmp_path: Path, keras_env: dict[str, str]
) -> None:
    """A 2-hour 44.1 kHz file is decoded and resampled window by window: its peak RSS is that of a
    100 s file tagged the same way (the same batches), where decoding and resampling it whole would
    take 2.2 GB, over the limit."""
    runs = {}
    for seconds, hop in [(100.0, 10), (7200.0, 600)]:
        path = sparse_wav(tmp_path / f"rec_{seconds:g}s.wav", 44100, seconds)
        runs[seconds] = run_cli(
            ["tag", str(path), "--model", "mn04_as", "--top-k", "1", "--window", "10", "--hop", str(hop)],
            keras_env, timeout=400,
        )
        assert runs[seconds].returncode == 0, runs[seconds].stderr[-3000:]
    windows = [line for line in runs[7200.0].stdout.splitlines() if line.lstrip().startswith("[")]
    assert len(windows) == 12 and windows[-1].lstrip().startswith("[ 6600.00 s")
    grown = runs[7200.0].peak_rss_bytes - runs[100.0].peak_rss_bytes
    assert grown < 64 * MIB, f"{runs[100.0].peak_rss_mib:.0f} -> {runs[7200.0].peak_rss_mib:.0f} MiB"
