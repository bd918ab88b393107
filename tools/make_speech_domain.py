"""A second fine-tuning domain unlike ESC-10: ten spoken command words synthesised with espeak-ng.

Each *speaker* is one espeak-ng accent with one voice variant (``en-gb-scotland+m2``); every speaker
says every word several times at a random speed and pitch around its own. Each clip is trimmed,
resampled to 8, 16 or 22.05 kHz, given a random gain, and placed at a random offset in 1 s of
low-level noise, so words are 0.2-0.6 s events in a 1 s file. One speaker (accent and variant
unseen in training) is the test side, another the validation side:

    python tools/make_speech_domain.py --out /tmp/speech_domain     # needs espeak-ng on PATH

Writes ``OUT/audio/<speaker>/<word>_<take>.wav``, ``OUT/manifest.csv`` (path,label,group,split,fold:
group and fold are the speaker) and ``OUT/dataset.json``. The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# (accent, variant, base pitch 0-99); every variant once, so a held-out speaker's timbre is unseen
SPEAKERS = (
    ("en-us", "m1", 40), ("en-gb", "f1", 60), ("en-gb-scotland", "m2", 35), ("en-029", "f2", 65),
    ("en-gb-x-rp", "m3", 45), ("en-us", "f5", 55), ("en-gb-x-gbclan", "m4", 50), ("en-gb", "m5", 30),
    ("en-gb-scotland", "f3", 70), ("en-us", "m6", 40), ("en-us-nyc", "f4", 60), ("en-gb-x-gbcwmd", "m7", 45),
)  # fmt: skip
TEST_SPEAKER = "en-gb-x-gbcwmd_m7"
VAL_SPEAKER = "en-us-nyc_f4"
SAMPLE_RATES = (8000, 16000, 22050)
SPEED_WPM = (120, 220)
PITCH_JITTER = 10
CLIP_SECONDS = 1.0


def speaker_name(accent: str, variant: str) -> str:
    return f"{accent}_{variant}"


def synthesise(word: str, voice: str, speed: int, pitch: int, scratch: Path) -> tuple[np.ndarray, int]:
    """espeak-ng's 22.05 kHz rendering of ``word`` as float samples."""
    wav = scratch / "espeak.wav"
    command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), word]
    subprocess.run(command, check=True, capture_output=True)
    samples, rate = sf.read(wav, dtype="float32")
    return samples, rate


def trimmed(samples: np.ndarray, rate: int, pad_seconds: float = 0.02) -> np.ndarray:
    """The word without espeak-ng's leading and trailing silence (a little margin kept)."""
    loud = np.flatnonzero(np.abs(samples) > 0.005 * np.abs(samples).max())
    pad = int(pad_seconds * rate)
    return samples[max(0, loud[0] - pad) : loud[-1] + pad + 1]


def place_in_noise(word: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """The word at a random gain and offset in a 1 s clip of noise 25-45 dB below its level."""
    word = word / np.abs(word).max() * 10 ** (rng.uniform(-20, -3) / 20)
    length = max(int(CLIP_SECONDS * rate), len(word))
    level = np.sqrt(np.mean(word**2)) * 10 ** (-rng.uniform(25, 45) / 20)
    clip = rng.normal(0.0, level, length).astype(np.float32)
    start = int(rng.integers(0, length - len(word) + 1))
    clip[start : start + len(word)] += word
    return np.clip(clip, -1.0, 1.0)


def side_of(speaker: str) -> str:
    return {TEST_SPEAKER: "test", VAL_SPEAKER: "val"}.get(speaker, "train")


def make_clip(word_index: int, speaker_index: int, take: int, seed: int, scratch: Path) -> tuple[np.ndarray, int]:
    """One take of one word by one speaker; its random draws depend only on these indices."""
    accent, variant, base_pitch = SPEAKERS[speaker_index]
    rng = np.random.default_rng([seed, speaker_index, word_index, take])
    speed = int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1))
    pitch = int(np.clip(base_pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1), 0, 99))
    rate = int(rng.choice(SAMPLE_RATES))
    samples, espeak_rate = synthesise(WORDS[word_index], f"{accent}+{variant}", speed, pitch, scratch)
    word = soxr.resample(trimmed(samples, espeak_rate), espeak_rate, rate, quality="HQ")
    return place_in_noise(word, rate, rng), rate


def write_dataset(out: Path, takes: int, seed: int) -> list[dict]:
    """Every clip as a 16-bit WAV under ``out/audio``; returns the manifest rows."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for speaker_index, (accent, variant, _) in enumerate(SPEAKERS):
            speaker = speaker_name(accent, variant)
            (out / "audio" / speaker).mkdir(parents=True, exist_ok=True)
            for word_index, word in enumerate(WORDS):
                for take in range(takes):
                    clip, rate = make_clip(word_index, speaker_index, take, seed, Path(scratch))
                    relative = f"audio/{speaker}/{word}_{take}.wav"
                    sf.write(out / relative, clip, rate, subtype="PCM_16")
                    rows.append({"path": relative, "label": word, "group": speaker, "split": side_of(speaker),
                                 "fold": speaker, "sample_rate": rate})  # fmt: skip
    return rows


def write_manifest(out: Path, rows: list[dict], takes: int, seed: int) -> None:
    columns = ["path", "label", "group", "split", "fold"]
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "words": list(WORDS), "speakers": [f"{a}+{v} (pitch {p})" for a, v, p in SPEAKERS],
        "test_speaker": TEST_SPEAKER, "val_speaker": VAL_SPEAKER, "takes": takes, "seed": seed,
        "speed_wpm": list(SPEED_WPM), "pitch_jitter": PITCH_JITTER, "clip_seconds": CLIP_SECONDS,
        "files_per_side": dict(Counter(r["split"] for r in rows)),
        "files_per_sample_rate": dict(Counter(r["sample_rate"] for r in rows)),
    }  # fmt: skip
    (out / "dataset.json").write_text(json.dumps(summary, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (its audio/ is replaced)")
    parser.add_argument("--takes", type=int, default=5, help="takes per word and speaker (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get install espeak-ng")
    out = Path(args.out)
    shutil.rmtree(out / "audio", ignore_errors=True)  # no stale clips from a run with more takes
    rows = write_dataset(out, args.takes, args.seed)
    write_manifest(out, rows, args.takes, args.seed)
    print(f"{len(rows)} clips, {len(WORDS)} words, {len(SPEAKERS)} speakers -> {out / 'manifest.csv'}")


if __name__ == "__main__":
    main()
