"""Exported artifacts read back right: label type, clip length and class names from the artifact,
window lengths in whole samples, and user mistakes as one-line errors (``eat-keras`` exit status 2).

One tiny fine-tuned-like model (width 0.1, 3 classes, softmax, trained on 2 s clips) is saved as a
model folder, a SavedModel and a 2.01 s TFLite file, shared by the whole module; none needs ../shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eat_keras.cli import main
from eat_keras.errors import EatKerasError, ExistingOutputError
from eat_keras.models import AudioTagger, ModelConfig
from eat_keras.runners import (
    EvaluationWindow,
    KerasRunner,
    SavedModelRunner,
    TFLiteRunner,
    evaluation_window,
    load_runner,
)

SR = 32000
NAMES = ["dog", "rain", "crying baby"]
WINDOW_SECONDS = 2.01  # 64320 samples; int(2.01 * 32000) would be 64319


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    from eat_keras.export.saved_model import export_saved_model
    from eat_keras.export.tflite import export_tflite
    from eat_keras.models.saving import save_tagger

    root = tmp_path_factory.mktemp("runners")
    config = ModelConfig(width_mult=0.1, num_classes=3, label_type="single_label")
    tagger = AudioTagger(config, class_names=NAMES, clip_seconds=2.0).build_for_inference()
    folder = save_tagger(tagger, root / "tiny")
    saved_model = export_saved_model(tagger, root / "exported", "tiny")
    (tflite,) = export_tflite(
        tagger, root / "exported", "tiny", window_seconds=(WINDOW_SECONDS,), quantizations=("float32",),
        log_mel=False, metadata=False,
    )
    rng = np.random.default_rng(0)
    audio = root / "noise.wav"
    sf.write(audio, rng.normal(0, 0.1, int(4.5 * SR)).astype(np.float32), SR)
    labels = root / "labels.csv"  # AudioSet layout: header row, quoted names
    labels.write_text('index,mid,display_name\n0,/m/a,"Dog"\n1,/m/b,"Rain"\n2,/m/c,"Crying, sobbing"\n')
    return {"folder": folder, "saved_model": saved_model, "tflite": tflite.path, "audio": audio, "labels": labels}


def test_artifacts_say_their_label_type_and_clip_length(artifacts):
    keras = KerasRunner(artifacts["folder"])
    saved = SavedModelRunner(artifacts["saved_model"])
    tflite = TFLiteRunner(artifacts["tflite"])  # no reference: the file itself says softmax
    assert [r.label_type for r in (keras, saved, tflite)] == ["single_label"] * 3
    assert [r.clip_seconds for r in (keras, saved, tflite)] == [2.0] * 3
    assert saved.class_names == tflite.class_names == NAMES
    assert not tflite.logits_exact  # softmax scores give logits up to a per-row constant


def test_tflite_softmax_scores_invert_to_the_keras_logits(artifacts):
    keras = KerasRunner(artifacts["folder"])
    tflite = TFLiteRunner(artifacts["tflite"])
    rng = np.random.default_rng(1)
    waveforms = rng.normal(0, 0.1, (3, tflite.window_samples)).astype(np.float32)
    want, got = keras.logits(waveforms), tflite.logits(waveforms)
    centred = lambda x: x - x.mean(axis=1, keepdims=True)  # noqa: E731
    # read as sigmoid scores (the old default), the difference was of order 1
    np.testing.assert_allclose(centred(got), centred(want), atol=1e-4)


def test_evaluation_window_comes_from_the_artifact(artifacts):
    saved, tflite = SavedModelRunner(artifacts["saved_model"]), TFLiteRunner(artifacts["tflite"])
    assert evaluation_window(saved, None) == EvaluationWindow(2 * SR, "the training clip length")
    assert evaluation_window(saved, 3.0) == EvaluationWindow(3 * SR, "--clip-seconds")
    assert evaluation_window(tflite, None).samples == 64320
    assert evaluation_window(tflite, WINDOW_SECONDS).samples == 64320
    with pytest.raises(EatKerasError, match=r"takes 2.01 s windows only; --clip-seconds 2 cannot"):
        evaluation_window(tflite, 2.0)  # never a silent change to the file's window


def test_verify_runs_each_artifact_at_its_own_window(artifacts, tmp_path, capsys):
    """A model trained on 2 s clips against its 2.01 s TFLite file: each side is evaluated as
    evaluate evaluates it, the windows are printed, and logits of different windows are not compared."""
    data = tmp_path / "data"
    for name in NAMES:
        (data / name).mkdir(parents=True)
        sf.write(data / name / "a.wav", np.random.default_rng(len(name)).normal(0, 0.1, 3 * SR).astype(np.float32), SR)
    assert main(["evaluate", str(artifacts["tflite"]), str(data), "--out", str(tmp_path / "eval")]) == 0
    evaluated = capsys.readouterr().out
    assert "2.01 s windows (the artifact's fixed input)" in evaluated
    assert main(["verify", str(artifacts["folder"]), str(artifacts["tflite"]), str(data)]) == 0
    out = capsys.readouterr().out
    assert "/tiny: 2 s windows (the training clip length)" in out
    assert "2.01 s windows (the artifact's fixed input)" in out
    assert "not compared (the two ran at different windows)" in out
    (line_b,) = [line for line in out.splitlines() if line.startswith("B ") and "accuracy" in line]
    accuracy_b = float(line_b.rsplit("accuracy ", 1)[1])
    (line,) = [line for line in evaluated.splitlines() if line.lower().startswith("accuracy")]
    assert accuracy_b == float(line.split()[1])


def test_label_file_is_parsed_and_counted_for_every_artifact(artifacts, tmp_path):
    want = ["Dog", "Rain", "Crying, sobbing"]
    for path in (artifacts["tflite"], artifacts["saved_model"], artifacts["folder"]):
        assert load_runner(path, artifacts["labels"]).class_names == want, path
    two = tmp_path / "two.txt"
    two.write_text("a\nb\n")
    for path in (artifacts["tflite"], artifacts["saved_model"], artifacts["folder"]):
        with pytest.raises(EatKerasError, match="2 labels for a 3-class model"):
            load_runner(path, two)


def test_label_file_wins_over_a_stale_labels_txt_beside_the_tflite(artifacts, tmp_path):
    # e.g. a later export of another model under the same name replaced labels.txt
    copy = tmp_path / artifacts["tflite"].name
    copy.write_bytes(artifacts["tflite"].read_bytes())
    (tmp_path / "labels.txt").write_text("".join(f"class {i}\n" for i in range(527)))
    with pytest.raises(EatKerasError, match="527 labels for a 3-class model"):
        load_runner(copy)
    assert load_runner(copy, artifacts["labels"]).class_names == ["Dog", "Rain", "Crying, sobbing"]


def test_tag_through_a_file_whose_window_is_not_a_round_float(artifacts, capsys):
    assert main(["tag", str(artifacts["audio"]), "--model", str(artifacts["tflite"]), "--json", "--top-k", "1"]) == 0
    windows = json.loads(capsys.readouterr().out)["results"][0]["windows"]
    # 4.5 s in 2.01 s windows: starts 0, 2.01, 4.02 (the last zero-padded)
    assert [round(w["start"], 4) for w in windows] == [0.0, 2.01, 4.02]
    assert all(round(w["end"] - w["start"], 4) == WINDOW_SECONDS for w in windows)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--window", "0.5"], "at least 1 s"),
        (["--window", "0"], "at least 1 s"),
        (["--window", "2", "--hop", "0"], "hop must be positive"),
        (["--window", "2", "--hop", "-1"], "hop must be positive"),
        (["--window", "2", "--hop", "0.00001"], "hop must be positive"),
        (["--window", "2", "--hop", "nan"], "finite number of seconds"),
        (["--window", "inf"], "finite number of seconds"),
        (["--top-k", "0"], "--top-k must be at least 1"),
    ],
)
def test_tag_refuses_bad_lengths_once(artifacts, capsys, flags, message):
    audio = str(artifacts["audio"])
    assert main(["tag", audio, audio, "--model", str(artifacts["folder"]), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_model_errors_are_one_line(artifacts, tmp_path, capsys):
    audio = str(artifacts["audio"])
    serving_root = artifacts["saved_model"].parent
    (tmp_path / "not_a_model.tflite").write_bytes(b"not a flatbuffer")
    cases = [
        (["tag", audio, "--model", str(tmp_path / "missing.tflite")], "cannot load as a TFLite model"),
        (["tag", audio, "--model", str(tmp_path / "not_a_model.tflite")], "cannot load as a TFLite model"),
        (["tag", audio, "--model", str(tmp_path)], "not an eat-keras model folder (no eat_keras.json)"),
        (["tag", audio, "--model", str(serving_root)], f"holds SavedModel versions 1; pass one of them, e.g. {serving_root / '1'}"),
        (["convert", str(artifacts["saved_model"]), "--out", str(tmp_path)], "an exported SavedModel"),
        (["convert", str(artifacts["folder"]), "--out", str(tmp_path), "--strides", "2211"], "a model folder fixes"),
        (["convert", "mn04_as", "--out", str(tmp_path), "--n-mels", "0"], "front-end sizes must be positive: n_mels=0"),
        (["export", str(artifacts["folder"]), "--out", str(serving_root.parent), "--version", "1"], "exists; choose another --version"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)


def test_a_folder_named_like_a_preset_does_not_hide_the_preset(artifacts, tmp_path, monkeypatch):
    """`eat-keras export mn04_as --out .` leaves ./mn04_as/1/; the next `export mn04_as` (or `tag
    --model mn04_as`) in that directory still means the preset."""
    from eat_keras import loading

    (tmp_path / "mn04_as" / "1").mkdir(parents=True)
    (tmp_path / "mn04_as" / "1" / "saved_model.pb").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    asked = []

    def preset_lookup(name):  # stands in for the weight download that would follow
        asked.append(name)
        raise EatKerasError("preset lookup reached")

    monkeypatch.setattr(loading, "get_preset", preset_lookup)
    with pytest.raises(EatKerasError, match="preset lookup reached"):
        loading.load_tagger("mn04_as")
    assert asked == ["mn04_as"]


def test_existing_version_is_also_a_file_exists_error():
    assert issubclass(ExistingOutputError, FileExistsError)


def test_a_registered_runner_kind_runs_its_artifacts(tmp_path):
    """A new kind of artifact is one table entry: load_runner (and so tag, evaluate, verify) finds it."""
    from eat_keras import runners

    class ConstantRunner:
        name, label_type, class_names = "constant", "single_label", ["a", "b"]
        window_samples, clip_seconds, logits_exact = None, None, True

        def logits(self, waveforms: np.ndarray) -> np.ndarray:
            return np.tile(np.array([[1.0, 0.0]], np.float32), (len(waveforms), 1))

    artifact = tmp_path / "model.const"
    artifact.write_text("constant")
    kind = runners.RunnerKind("const", lambda path, _: path.suffix == ".const", lambda *_: ConstantRunner())
    runners.register_runner_kind(kind)
    try:
        runner = runners.load_runner(artifact)
        assert isinstance(runner, ConstantRunner)
        assert runner.logits(np.zeros((3, 10), np.float32)).shape == (3, 2)
        with pytest.raises(ValueError, match="already registered"):
            runners.register_runner_kind(kind)
    finally:
        runners.RUNNER_KINDS.remove(kind)
    assert kind not in runners.RUNNER_KINDS


def test_a_fine_tuned_models_export_carries_its_training_window(artifacts, tmp_path, capsys):
    """export writes a file of the training clip length by default; verify of the model against it
    reports, for both sides, the accuracy evaluate reports for the model."""
    data = tmp_path / "data"
    for i, name in enumerate(NAMES):
        (data / name).mkdir(parents=True)
        for j in range(2):
            noise = np.random.default_rng(10 * i + j).normal(0, 0.05 * (i + 1), 5 * SR).astype(np.float32)
            sf.write(data / name / f"{j}.wav", noise, SR)
    flags = ["--format", "tflite", "--quantization", "float32", "--no-logmel", "--no-metadata"]
    assert main(["export", str(artifacts["folder"]), "--out", str(tmp_path / "out"), *flags]) == 0
    files = sorted(p.name for p in (tmp_path / "out" / "tiny" / "tflite").glob("*.tflite"))
    assert files == ["tiny_10s_float32.tflite", "tiny_1s_float32.tflite", "tiny_2s_float32.tflite"]
    two_seconds = tmp_path / "out" / "tiny" / "tflite" / "tiny_2s_float32.tflite"
    capsys.readouterr()

    def evaluated_accuracy(artifact: Path) -> float:
        assert main(["evaluate", str(artifact), str(data), "--out", str(tmp_path / "eval")]) == 0
        (line,) = [line for line in capsys.readouterr().out.splitlines() if line.lower().startswith("accuracy")]
        return float(line.split()[1])

    # each side exactly as evaluate computes it (the same windows, the same runner)
    want = [evaluated_accuracy(artifacts["folder"]), evaluated_accuracy(two_seconds)]
    assert main(["verify", str(artifacts["folder"]), str(two_seconds), str(data)]) == 0
    out = capsys.readouterr().out
    accuracies = [float(line.rsplit("accuracy ", 1)[1]) for line in out.splitlines() if ": accuracy " in line]
    assert accuracies == want
    difference = float(out.split("max |logit A - logit B|: ")[1].split()[0])
    assert difference < 1e-3  # compared: both ran at 2 s
    assert float(out.split("max |score A - score B|: ")[1].split()[0]) < 1e-3
