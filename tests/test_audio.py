"""Audio loading: parity with librosa.load (golden waveforms), mixing, resampling, and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import CLIPS
from eat_keras.audio import (
    MAX_CHANNELS,
    MAX_FILE_SAMPLE_RATE,
    MIN_FILE_SAMPLE_RATE,
    SAMPLE_RATE,
    AudioFileSignal,
    audio_info,
    check_min_length,
    load_audio,
    open_audio,
    resample,
)
from eat_keras.errors import AudioError, EatKerasError


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_freq(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


# --- golden parity ---------------------------------------------------------------------------


@pytest.mark.parametrize("clip", CLIPS)
def test_matches_golden_librosa_waveform(clip: str, shared_dir: Path, golden_dir: Path) -> None:
    """load_audio reproduces librosa.load(sr=32000, mono=True) as stored by upstream."""
    wav = load_audio(shared_dir / "audio" / f"{clip}.wav")
    golden = np.load(golden_dir / "clips" / f"{clip}_wav32k.npy")
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert wav.shape == golden.shape
    tol = 1e-6 if clip == "metro_station-paris" else 1e-7  # only metro is resampled (44.1 kHz)
    assert float(np.max(np.abs(wav - golden))) <= tol


# --- mixing, resampling, formats ---------------------------------------------------------------


def test_stereo_is_mixed_by_mean(tmp_path: Path) -> None:
    left = _sine(440, SAMPLE_RATE, 0.5)
    right = _sine(1000, SAMPLE_RATE, 0.5, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    wav = load_audio(path)
    np.testing.assert_allclose(wav, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("sr_in", [48000, 16000, 44100])
def test_resample_length_and_frequency(tmp_path: Path, sr_in: int) -> None:
    seconds, freq = 1.3, 1000.0
    path = tmp_path / f"sine_{sr_in}.wav"
    sf.write(path, _sine(freq, sr_in, seconds), sr_in, subtype="FLOAT")
    wav = load_audio(path)
    n_in = int(round(sr_in * seconds))
    assert wav.dtype == np.float32
    assert len(wav) == -(-n_in * SAMPLE_RATE // sr_in)  # ceil(n * 32000 / sr_in)
    assert abs(_peak_freq(wav, SAMPLE_RATE) - freq) < 2.0
    # Amplitude survives (HQ resampler, tone far below Nyquist); ignore the filter's edges.
    core = wav[200:-200]
    assert abs(float(np.max(np.abs(core))) - 0.5) < 0.01


def test_load_audio_other_sample_rate(tmp_path: Path) -> None:
    path = tmp_path / "s.wav"
    sf.write(path, _sine(440, 32000, 1.0), 32000, subtype="FLOAT")
    wav = load_audio(path, sample_rate=16000)
    assert len(wav) == 16000
    assert abs(_peak_freq(wav, 16000) - 440) < 2.0


def test_resample_helper() -> None:
    x = _sine(500, 48000, 0.25)
    y = resample(x, 48000, 32000)
    assert y.dtype == np.float32 and y.shape == (8000,)
    np.testing.assert_array_equal(resample(x, 48000, 48000), x)
    assert resample(np.zeros(0, np.float32), 44100, 32000).shape == (0,)
    assert resample(np.ones(3, np.float32), 44100, 32000).shape == (3,)  # ceil(3 * 0.7256)
    stereo = resample(np.stack([x, x], axis=1), 48000, 32000)
    assert stereo.shape == (8000, 2)
    with pytest.raises(ValueError):
        resample(x, 0, 32000)


@pytest.mark.parametrize(
    ("suffix", "fmt", "subtype", "atol"),
    [(".flac", "FLAC", "PCM_16", 1e-4), (".ogg", "OGG", "VORBIS", 0.1)],
)
def test_compressed_formats_load(
    tmp_path: Path, suffix: str, fmt: str, subtype: str, atol: float
) -> None:
    x = _sine(440, SAMPLE_RATE, 1.0)
    path = tmp_path / f"tone{suffix}"
    sf.write(path, x, SAMPLE_RATE, format=fmt, subtype=subtype)
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    if fmt == "OGG":
        assert abs(len(wav) - len(x)) <= 1  # vorbis may pad/trim at the edges
    else:
        assert len(wav) == len(x)
    assert abs(_peak_freq(wav, SAMPLE_RATE) - 440) < 2.0
    n = min(len(wav), len(x))
    assert float(np.max(np.abs(wav[:n] - x[:n]))) < atol


# --- errors ----------------------------------------------------------------------------------


def _assert_audio_error(path: Path, *words: str) -> str:
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert path.name in message
    assert "\n" not in message
    for word in words:
        assert word in message.lower()
    assert isinstance(info.value, EatKerasError)
    return message


def _wav_bytes(tmp_path: Path, n: int = 32000) -> bytes:
    full = tmp_path / "full_source.wav"
    sf.write(full, _sine(440, SAMPLE_RATE, n / SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    return full.read_bytes()


def test_missing_file(tmp_path: Path) -> None:
    _assert_audio_error(tmp_path / "nope.wav", "not found")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "clips.wav"
    folder.mkdir()
    _assert_audio_error(folder, "directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _assert_audio_error(path, "empty")


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.wav"
    path.write_bytes(b"this is not audio at all " * 40)
    _assert_audio_error(path, "cannot decode")


def test_wav_cut_mid_data_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    """libsndfile sizes a WAV by what the file holds; the data chunk's declared size tells it was cut."""
    data = _wav_bytes(tmp_path)
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: 44 + 2 * 10000])  # 44-byte header + 10000 of the 32000 16-bit frames
    message = _assert_audio_error(path, "truncated", "32000 frames", "10000")
    assert "0.688 s are missing" in message


@pytest.mark.parametrize(
    ("suffix", "fmt", "subtype", "sr"),
    [(".wav", "WAV", "FLOAT", 44100), (".aiff", "AIFF", "PCM_24", 32000), (".ogg", "OGG", "VORBIS", 32000),
     (".opus", "OGG", "OPUS", 48000)],
)
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_files_cut_short_are_refused(tmp_path: Path, suffix: str, fmt: str, subtype: str, sr: int, keep: float) -> None:
    """Stereo WAV, AIFF, Ogg Vorbis and Opus cut at half or 90 %: refused, not decoded partially."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3 * sr, 2)) * 0.2).astype(np.float32)
    src = tmp_path / f"src{suffix}"
    sf.write(src, x, sr, format=fmt, subtype=subtype)
    assert len(load_audio(src)) > 0  # the whole file is fine
    data = src.read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * keep)])
    _assert_audio_error(path, "truncated", "missing")
    with pytest.raises(AudioError, match="truncated"):
        with open_audio(path, stream=True):
            pass


@pytest.fixture
def mp3_file(tmp_path: Path) -> Path:
    path = tmp_path / "src.mp3"
    try:
        sf.write(path, _sine(440, 32000, 3.0), 32000, format="MP3", subtype="MPEG_LAYER_III")
    except (sf.LibsndfileError, TypeError, ValueError) as exc:  # libsndfile built without mpg123/lame
        pytest.skip(f"no MP3 support: {exc}")
    return path


def test_mp3_decoding_short_of_its_header_is_refused(tmp_path: Path, mp3_file: Path, short_stream_threshold: float) -> None:
    """An MP3's frame count comes from its header, and decoding stops early: whole or streamed."""
    data = mp3_file.read_bytes()
    path = tmp_path / "cut.mp3"
    path.write_bytes(data[: len(data) // 2])
    _assert_audio_error(path, "truncated", "decoding stops after")
    with open_audio(path, stream=True) as signal:
        assert isinstance(signal, AudioFileSignal)
        with pytest.raises(AudioError, match="truncated: .* decoding stops after"):
            signal[0 : len(signal)]


@pytest.mark.parametrize("keep", [4, 12, 20, 30, 44])
def test_truncated_header_is_an_error(tmp_path: Path, keep: int) -> None:
    """A WAV whose header is cut (or holds no data at all) raises AudioError."""
    data = _wav_bytes(tmp_path)
    path = tmp_path / f"hdr{keep}.wav"
    path.write_bytes(data[:keep])
    _assert_audio_error(path)


def test_truncated_flac_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src.flac"
    sf.write(src, _sine(440, SAMPLE_RATE, 1.0), SAMPLE_RATE, format="FLAC")
    path = tmp_path / "cut.flac"
    path.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    _assert_audio_error(path, "cannot decode")


def test_zero_frames(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE)
    _assert_audio_error(path, "0 frames")


@pytest.mark.parametrize(("bad", "subtype"), [(np.nan, "FLOAT"), (np.inf, "DOUBLE")])
def test_non_finite_samples(tmp_path: Path, bad: float, subtype: str) -> None:
    x = _sine(440, 44100, 0.5)
    x[100] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, x, 44100, subtype=subtype)
    _assert_audio_error(path, "non-finite")


# --- implausible headers and files that are not regular ---------------------------------------


@pytest.mark.parametrize(("rate", "words"), [(1, "1 hz"), (999, "999 hz"), (800_000, "800000 hz")])
def test_implausible_sample_rates_are_refused_before_decoding(tmp_path: Path, rate: int, words: str) -> None:
    """A 200 KB WAV claiming 1 Hz would be resampled to 3.2 G samples; refused from the header."""
    from audio_files import wav_with_rate

    path = wav_with_rate(tmp_path / f"rate_{rate}.wav", rate, 200_000)
    _assert_audio_error(path, "implausible sample rate", words, "1000 hz to 768 khz")
    with pytest.raises(AudioError, match="implausible sample rate"):
        audio_info(path)


def test_the_sample_rate_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    from audio_files import wav_with_rate

    for rate in (MIN_FILE_SAMPLE_RATE, MAX_FILE_SAMPLE_RATE):
        path = wav_with_rate(tmp_path / f"rate_{rate}.wav", rate, 4000)
        assert len(load_audio(path)) == -(-1978 * SAMPLE_RATE // rate)


def test_absurd_channel_counts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.wav"
    sf.write(path, np.zeros((64, MAX_CHANNELS + 1), np.float32), SAMPLE_RATE)
    _assert_audio_error(path, "implausible channel count", str(MAX_CHANNELS + 1))


def test_flac_claiming_more_frames_than_it_can_hold_is_refused(tmp_path: Path) -> None:
    """A small FLAC whose STREAMINFO claims 2^36 frames (128 GiB as float32 stereo) is refused from
    its header; one claiming a little more than it holds is refused when decoding stops short."""
    from audio_files import flac_claiming_frames

    bomb = flac_claiming_frames(tmp_path / "bomb.flac", (1 << 36) - 1)  # the field's largest value
    message = _assert_audio_error(bomb, "68719476735 frames", "bytes of pcm_16 audio can hold")
    assert "h)" in message  # the claimed length in hours
    unknown = flac_claiming_frames(tmp_path / "unknown.flac", 0)  # 0: length not stated
    _assert_audio_error(unknown, "does not state how many frames")
    short = flac_claiming_frames(tmp_path / "short.flac", 48000)  # holds 32000
    _assert_audio_error(short, "cannot decode")


def test_a_fifo_is_not_a_regular_file(tmp_path: Path) -> None:
    """Opening a FIFO would block; it is refused from its file type, not reported as empty."""
    import os

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    message = _assert_audio_error(fifo, "fifo", "not a regular file")
    assert "empty" not in message


def test_symlinks_that_loop_or_dangle_say_so(tmp_path: Path) -> None:
    import os

    os.symlink(tmp_path / "b.wav", tmp_path / "a.wav")
    os.symlink(tmp_path / "a.wav", tmp_path / "b.wav")
    message = _assert_audio_error(tmp_path / "a.wav", "symbolic link loop")
    assert "not found" not in message
    os.symlink(tmp_path / "gone.wav", tmp_path / "dangling.wav")
    _assert_audio_error(tmp_path / "dangling.wav", "not found", "broken symbolic link", "gone.wav")


def test_check_min_length() -> None:
    check_min_length(np.zeros(32000, np.float32), 32000, "a.wav")
    with pytest.raises(AudioError) as info:
        check_min_length(np.zeros(16000, np.float32), 32000, "short.wav")
    message = str(info.value)
    assert "short.wav" in message
    assert "audio is 0.5 s long; the model needs at least 1 s" in message
    with pytest.raises(AudioError, match="needs at least"):
        check_min_length(np.zeros((1, 10), np.float32), 11)


# --- streaming long files ----------------------------------------------------------------------


@pytest.fixture
def short_stream_threshold(monkeypatch: pytest.MonkeyPatch) -> float:
    """Stream files from 2 s on, so the tests need no minute-long files."""
    import eat_keras.audio

    monkeypatch.setattr(eat_keras.audio, "STREAM_MIN_SECONDS", 2.0)
    return 2.0


def test_streamed_signal_slices_equal_the_loaded_array(tmp_path: Path, short_stream_threshold: float) -> None:
    """Stereo 24-bit at 32 kHz: every slice (inside, across the end, empty) is bit-identical."""
    rng = np.random.default_rng(0)
    stereo = (rng.uniform(-0.5, 0.5, (3 * SAMPLE_RATE + 123, 2))).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, stereo, SAMPLE_RATE, subtype="PCM_24")
    whole = load_audio(path)
    with open_audio(path, stream=True) as signal:
        assert isinstance(signal, AudioFileSignal)
        assert len(signal) == len(whole) and signal.shape == whole.shape and np.ndim(signal) == 1
        for start, stop in [(0, 32000), (40000, 72000), (len(whole) - 1000, len(whole) + 31000), (5, 5)]:
            piece = signal[start:stop]
            assert piece.dtype == np.float32
            np.testing.assert_array_equal(piece, whole[start:stop])
        with pytest.raises(TypeError):
            signal[::2]
    assert signal._file.closed


@pytest.mark.parametrize(("fmt", "channels"), [("WAV", 1), ("WAV", 2), ("FLAC", 1), ("AIFF", 2)])
def test_16_bit_pcm_decodes_to_libsndfiles_float_values(
    tmp_path: Path, short_stream_threshold: float, fmt: str, channels: int
) -> None:
    """16-bit files are read as int16 and scaled in numpy (faster): the same bits as libsndfile's
    own float decoding (what librosa.load returns), the full range included, whole or streamed."""
    rng = np.random.default_rng(2)
    ints = rng.integers(-32768, 32768, (3 * SAMPLE_RATE, channels)).astype(np.int16)
    ints[:2] = [[-32768] * channels, [32767] * channels]
    path = tmp_path / f"pcm16.{fmt.lower()}"
    sf.write(path, ints, SAMPLE_RATE, format=fmt, subtype="PCM_16")
    reference, _ = sf.read(path, dtype="float32", always_2d=True)  # libsndfile's int -> float
    expected = reference[:, 0] if channels == 1 else reference.mean(axis=1, dtype=np.float32)
    np.testing.assert_array_equal(load_audio(path), expected)
    with open_audio(path, stream=True) as signal:
        assert isinstance(signal, AudioFileSignal)
        np.testing.assert_array_equal(signal[SAMPLE_RATE - 5 : 2 * SAMPLE_RATE], expected[SAMPLE_RATE - 5 : 2 * SAMPLE_RATE])
    assert expected.min() == -1.0


@pytest.mark.parametrize(("subtype", "channels"), [("PCM_16", 1), ("PCM_16", 2), ("PCM_24", 1), ("FLOAT", 1)])
def test_read_into_writes_what_slicing_returns(
    tmp_path: Path, short_stream_threshold: float, subtype: str, channels: int
) -> None:
    """Windows decoded into caller buffers (mono 16-bit through the reused int16 buffer, the rest
    through slicing) hold the slice's values; the count says where the file ended."""
    x = np.random.default_rng(3).uniform(-0.9, 0.9, (3 * SAMPLE_RATE + 77, channels)).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, x, SAMPLE_RATE, subtype=subtype)
    with open_audio(path, stream=True) as signal:
        assert isinstance(signal, AudioFileSignal)
        n = len(signal)
        for start, size in [(0, SAMPLE_RATE), (SAMPLE_RATE + 3, 2 * SAMPLE_RATE), (n - 500, SAMPLE_RATE), (n, 10), (5, 100)]:
            out = np.full(size, 7.0, np.float32)
            filled = signal.read_into(start, out)
            assert filled == min(size, n - start)
            np.testing.assert_array_equal(out[:filled], signal[start : start + size])
            assert (out[filled:] == 7.0).all()  # nothing written past the end of the file


def test_open_audio_streams_long_files_at_any_rate(tmp_path: Path, short_stream_threshold: float) -> None:
    """Long files stream whatever their rate; short files, and stream=False, are loaded whole."""
    long_44k = tmp_path / "long_44k.wav"
    sf.write(long_44k, _sine(440, 44100, 3.0), 44100)
    long_32k = tmp_path / "long_32k.wav"
    sf.write(long_32k, _sine(440, SAMPLE_RATE, 3.0), SAMPLE_RATE)
    short = tmp_path / "short.wav"
    sf.write(short, _sine(440, SAMPLE_RATE, 1.0), SAMPLE_RATE)
    short_many_channels = tmp_path / "short_4ch.wav"  # 1 s but 4 s of samples over its channels
    sf.write(short_many_channels, np.tile(_sine(440, 48000, 1.0)[:, None], (1, 4)), 48000)
    for path, stream, streamed in [
        (long_44k, True, True), (long_32k, True, True), (short_many_channels, True, True),
        (short, True, False), (long_44k, False, False), (long_32k, False, False),
    ]:
        with open_audio(path, stream=stream) as waveform:
            assert isinstance(waveform, AudioFileSignal) == streamed, (path.name, stream)
            np.testing.assert_array_equal(waveform[0 : len(waveform)], load_audio(path))
    with pytest.raises(AudioError, match="not found"):
        with open_audio(tmp_path / "missing.wav", stream=True):
            pass


def _read_in_windows(signal: AudioFileSignal, window: int, hop: int) -> np.ndarray:
    """Every sample, read as tagging reads: overlapping windows in order, through read_into."""
    out = np.zeros(len(signal), np.float32)
    row = np.empty(window, np.float32)
    for start in range(0, len(signal), hop):
        filled = signal.read_into(start, row)
        assert filled == min(window, len(signal) - start)
        out[start : start + filled] = row[:filled]
    return out


@pytest.mark.parametrize(("sr_in", "channels"), [(44100, 1), (22050, 1), (48000, 2), (11025, 3)])
@pytest.mark.parametrize("block_samples", [1000, 4096 * 3 + 7])
def test_streamed_resampling_equals_the_one_shot_result(
    tmp_path: Path, short_stream_threshold: float, sr_in: int, channels: int, block_samples: int
) -> None:
    """soxr's streaming resampler fed block by block gives load_audio's one-shot soxr HQ samples,
    bit for bit, and the same length (librosa's ceil): soxr filters the same input through the same
    fixed-size internal blocks whatever sizes it is fed in. Blocks far smaller than a window, and
    windows that overlap, skip ahead (hop longer than the window) or go back (a rewind)."""
    rng = np.random.default_rng(sr_in)
    x = (rng.standard_normal((int(3.7 * sr_in) + 11, channels)) * 0.3).astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(path, x, sr_in, subtype="FLOAT")
    one_shot = load_audio(path)
    assert len(one_shot) == -(-len(x) * SAMPLE_RATE // sr_in)
    with open_audio(path, stream=True, block_samples=block_samples) as signal:
        assert isinstance(signal, AudioFileSignal) and len(signal) == len(one_shot)
        np.testing.assert_array_equal(_read_in_windows(signal, 32000, 24000), one_shot)
        np.testing.assert_array_equal(signal[5000:9000], one_shot[5000:9000])  # back: rewinds
        np.testing.assert_array_equal(signal[90000:90500], one_shot[90000:90500])  # ahead, a gap
        np.testing.assert_array_equal(signal[len(one_shot) - 300 : len(one_shot) + 50], one_shot[-300:])


@pytest.mark.parametrize(("window_s", "hop_s"), [(10, 10), (1, 120)])
def test_streaming_a_long_resampled_file_holds_about_a_window(tmp_path: Path, window_s: int, hop_s: int) -> None:
    """Ten minutes at 44.1 kHz read in windows, back to back or with two minutes skipped between
    them: numpy's peak allocation stays within a few 10 s windows, where the whole file would take
    180 MB (decoded and resampled)."""
    import tracemalloc

    from audio_files import sparse_wav

    path = sparse_wav(tmp_path / "long_44k.wav", 44100, 600.0)
    window = np.empty(window_s * SAMPLE_RATE, np.float32)
    tracemalloc.start()
    try:
        with open_audio(path, stream=True) as signal:
            assert isinstance(signal, AudioFileSignal) and len(signal) == 600 * SAMPLE_RATE
            for start in range(0, len(signal), hop_s * SAMPLE_RATE):
                assert signal.read_into(start, window) == len(window)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 10 * SAMPLE_RATE * 4, f"{peak / 2**20:.1f} MiB"


def test_streamed_nan_is_reported_with_the_window_that_holds_it(tmp_path: Path, short_stream_threshold: float) -> None:
    x = _sine(440, SAMPLE_RATE, 3.0)
    x[2 * SAMPLE_RATE + 7] = np.nan
    path = tmp_path / "nan_late.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    with open_audio(path, stream=True) as signal:
        assert np.isfinite(signal[0:SAMPLE_RATE]).all()
        with pytest.raises(AudioError, match="nan_late.wav: audio holds non-finite samples"):
            signal[2 * SAMPLE_RATE : 3 * SAMPLE_RATE]


@pytest.mark.parametrize("fixed_window", [False, True])
def test_windowed_tagging_of_a_streamed_file_equals_the_loaded_one(
    tmp_path: Path, short_stream_threshold: float, fixed_window: bool
) -> None:
    """tag_with slices windows (the last one zero-padded) from either form with the same result."""
    from eat_keras.tagging import tag_with

    x = (np.random.default_rng(1).standard_normal(int(4.3 * SAMPLE_RATE)) * 0.1).astype(np.float32)
    path = tmp_path / "long.flac"
    sf.write(path, x, SAMPLE_RATE, format="FLAC")

    def scores(batch: np.ndarray) -> np.ndarray:  # a "model" that sees every sample of each window
        return np.stack([batch.mean(axis=1), batch.std(axis=1), batch[:, -1]], axis=1)

    names = ["mean", "std", "last"]
    with open_audio(path, stream=True) as signal:
        assert isinstance(signal, AudioFileSignal)
        streamed = tag_with(scores, names, SAMPLE_RATE, signal, 3, 1.5, 1.0, batch_size=3, fixed_window=fixed_window)
    loaded = tag_with(scores, names, SAMPLE_RATE, load_audio(path), 3, 1.5, 1.0, batch_size=3, fixed_window=fixed_window)
    assert [(r.start, r.end) for r in streamed] == [(r.start, r.end) for r in loaded]
    assert len(streamed) == 4  # starts 0, 1, 2, 3 s; the last window runs past the end
    # the batch buffer is reused: the padded tail of the last window is zeros, not the old samples
    assert streamed[-1].scores[2] == 0.0 and loaded[-1].scores[2] == 0.0
    for a, b in zip(streamed, loaded):
        np.testing.assert_array_equal(a.scores, b.scores)
