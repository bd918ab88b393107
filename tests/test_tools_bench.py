"""Fast checks of the benchmark's own logic in ``tools/bench`` (no model is built or timed)."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import pytest

from shared_data import REPO_ROOT

if str(REPO_ROOT) not in sys.path:  # the tools run as `python -m tools.bench` from the repo root
    sys.path.append(str(REPO_ROOT))

from tools.bench import catalog, onnx2tf_route, report, seed_pipeline, targets, timing  # noqa: E402
from tools.bench.inputs import INPUT_SPECS  # noqa: E402
from tools.bench.models import MODELS  # noqa: E402


def test_seed_frames_are_uncentred_stft_frames() -> None:
    assert seed_pipeline.seed_frames(64000) == 198
    assert seed_pipeline.seed_frames(320000) == 998
    assert INPUT_SPECS["b1_2s"].frames == 200 and INPUT_SPECS["b8_10s"].frames == 1000


def test_expand_routes() -> None:
    assert catalog.expand_routes(["tflite"]) == [r for r in catalog.ALL_ROUTES if r.startswith("tflite_")]
    assert catalog.expand_routes(["all"]) == catalog.ALL_ROUTES
    with pytest.raises(SystemExit):
        catalog.expand_routes(["nope"])


def test_dymn_needs_one_onnx_per_shape_mn_one_dynamic() -> None:
    specs = list(INPUT_SPECS.values())
    dymn = catalog.required_artifacts(MODELS["dymn04"], ["seed", "onnxruntime"], specs)
    assert set(dymn) == {f"onnx/b{b}_t{t}" for b, t in ((1, 198), (1, 998), (8, 998), (1, 200), (1, 1000), (8, 1000))}
    assert catalog.required_artifacts(MODELS["mn10"], ["seed", "onnxruntime"], specs) == ["onnx/dynamic"]
    tflite = catalog.required_artifacts(MODELS["mn04"], ["tflite_float32"], specs)
    assert tflite == ["tflite_float32/2s", "tflite_float32/10s"]  # batch 8 reuses the [1, N] file


def test_summarize() -> None:
    stats = timing.summarize([0.010, 0.020, 0.030], batch=8)
    assert stats["median_ms"] == pytest.approx(20.0) and stats["min_ms"] == pytest.approx(10.0)
    assert stats["clips_per_s"] == pytest.approx(400.0)


def test_round_robin_alternates_cells() -> None:
    """One warm-up round, then per round and cell one untimed lead-in call and one timed call."""
    order: list[str] = []
    calls = {("a", "x"): lambda: order.append("a"), ("b", "x"): lambda: order.append("b")}
    times = timing.round_robin(calls, runs=3, warmup=1, lead_in_s=0)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3 and all(len(t) == 3 for t in times.values())


def test_round_robin_lead_in_lasts_and_is_not_timed() -> None:
    """Lead-in calls go on for ``lead_in_s``; the slow first call of a visit never reaches the times."""
    state = {"calls": 0, "after_other_cell": True}

    def call() -> None:  # slow right after the other cell ran, as after onnxruntime's spinning workers
        state["calls"] += 1
        time.sleep(0.05 if state["after_other_cell"] else 0.001)
        state["after_other_cell"] = False

    def other_cell() -> None:
        state["after_other_cell"] = True

    times = timing.round_robin({("a", "x"): call, ("b", "x"): other_cell}, runs=2, warmup=0, lead_in_s=0.06)
    assert len(times[("a", "x")]) == 2 and max(times[("a", "x")]) < 0.04
    assert state["calls"] >= 2 * 3  # per round: the 50 ms call, 1 ms calls up to 60 ms, the timed one


def test_onnx2tf_error_text_keeps_the_exception_and_node() -> None:
    output = (
        "noise\n\x1b[31mValueError: Exception encountered when calling layer \"tf.reshape_18\".\x1b[0m\n\n"
        "Cannot reshape a tensor with 72 elements to shape [8,1,?,0]\nCall arguments received:\n"
        "ERROR: onnx_op_name: wa/m/layers.0/depth_conv/Conv\nERROR: Read this and deal with it.\n"
    )
    text = onnx2tf_route._error_text(output)
    assert text.splitlines() == [
        'ValueError: Exception encountered when calling layer "tf.reshape_18".',
        "Cannot reshape a tensor with 72 elements to shape [8,1,?,0]",
        "ERROR: onnx_op_name: wa/m/layers.0/depth_conv/Conv",
    ]


def _cell(median_ms: float, batch: int = 1) -> dict[str, Any]:
    return {"stats": timing.summarize([median_ms / 1e3] * 3, batch), "times_ms": [median_ms] * 3}


def _fake_results() -> dict[str, Any]:
    routes = {
        "tflite_float32": {"b1_2s": 4.0, "b1_10s": 20.0, "b8_10s": 160.0},
        "tflite_float32_batch": {"b8_10s": 150.0},
        "savedmodel_frontend": {"b8_10s": 70.0},
        "onnxruntime": {"b8_10s": 250.0},
        "tflite_frontend": {"b1_2s": 0.5, "b1_10s": 3.0},
        "tflite_model_only": {"b1_2s": 3.6, "b1_10s": 17.0},
        "seed": {"b1_2s": 10.0, "b1_10s": 50.0, "b8_10s": 400.0},
        "savedmodel": {"b8_10s": 300.0},
        "onnx2tf": {"b1_2s": 5.0, "b1_10s": 15.0},
    }
    model = {
        "preset": "mn04_as", "weights": "w", "upstream_onnx": "o", "onnx_shape": "dynamic",
        "inputs_run": ["b1_2s", "b1_10s", "b8_10s"],
        "routes": {
            name: {"label": name, "scope": catalog.ROUTE_DEFS[name].scope, "error": None,
                   "inputs": {inp: _cell(ms, 8 if inp == "b8_10s" else 1) for inp, ms in cells.items()}}
            for name, cells in routes.items()
        },
        "checks": {"onnx2tf_vs_onnxruntime_logits": {"b1_2s": 1e-5}},
        "build": {"artifacts": {"savedmodel": {"seconds": 10.0, "size_bytes": 1e6, "cached": False, "note": ""}},
                  "steps": {}},
    }
    results = {
        "machine": {"command": "python -m tools.bench", "date": "d", "git_commit": "c", "cpu": "cpu", "cpu_features": ["avx2", "avx512_vnni"],
                    "logical_cores": 2, "usable_cores": 2, "ram_gib": 8.0, "platform": "p", "python": "3",
                    "load_average_at_start": [0.1, 0.1, 0.1], "versions": {"tensorflow": "2"}},
        "settings": {"smoke": True, "runs": 3, "warmup": 1, "threads": 2, "probe_calls": 0,
                     "models": ["mn04"], "inputs": ["b1_2s", "b1_10s", "b8_10s"], "routes": ["seed"]},
        "inputs": {n: {"batch": s.batch, "seconds": s.seconds, "clips": ["speech"]} for n, s in INPUT_SPECS.items()},
        "models": {"mn04": model},
        "tag_hour": {"command": "eat-keras tag", "exit_code": 0, "audio_s": 3600.0, "wall_s": 6.0,
                     "realtime_factor": 600.0, "peak_rss_mb": 1000.0, "user_cpu_s": 5.0, "system_cpu_s": 1.0,
                     "windows": 360, "expected_windows": 360, "recording": "r.wav", "log": "l"},
        "agreement": {"model": "mn04", "clips": 320, "calibration_summary": "4 recordings", "export_s": 60.0,
                      "files": {"int8/1s": {"file": "m_1s_int8.tflite", "agree": 300, "clips": 320,
                                            "top1_agreement": 300 / 320, "max_abs_score_diff": 0.1},
                                "int8/10s": {"file": "m_10s_int8.tflite", "agree": 310, "clips": 320,
                                             "top1_agreement": 310 / 320, "max_abs_score_diff": 0.1}}},
    }
    model["frontend_share"] = targets.frontend_shares(results, "mn04")
    return results


def test_targets_and_report() -> None:
    results = _fake_results()
    rows = targets.evaluate(results)

    def find(words: str, model: str, inp: str) -> dict[str, Any]:
        (row,) = [r for r in rows if words in r["target"] and r["model"] == model and r["input"] == inp]
        return row

    throughput = find("seed pipeline's (× seed)", "mn04", "b8_10s")
    assert throughput["value"] == pytest.approx(400 / 300) and throughput["passed"] is True
    assert throughput["threshold"] == 1.0  # oneDNN on (or TensorFlow's default); 1.2 with it off
    vs_ort = find("onnxruntime's model-only", "mn04", "b8_10s")
    assert vs_ort["value"] == pytest.approx(300 / 250) and vs_ort["passed"] is False  # > 1.15
    sm_share = find("SavedModel front-end", "mn04", "b8_10s")
    assert sm_share["value"] == pytest.approx(70 / 300) and sm_share["passed"] is False  # > 20 %
    fixed = find("in one invoke", "mn04", "b8_10s")
    assert fixed["value"] == pytest.approx(160 / 150) and fixed["passed"] is True
    assert find("int8 top-1 agreement", "mn04", "1 s windows")["passed"] is False  # 0.9375 < 0.95
    assert find("int8 top-1 agreement", "mn04", "10 s windows")["value"] == pytest.approx(310 / 320)
    vs_seed = find("seed pipeline's", "mn04", "b1_2s")
    assert vs_seed["value"] == pytest.approx(0.4) and vs_seed["passed"] is True
    vs_onnx2tf = find("onnx2tf", "mn04", "b1_10s")
    assert vs_onnx2tf["value"] == pytest.approx(20 / 15) and vs_onnx2tf["passed"] is False
    share = find("front-end", "mn04", "b1_10s")
    assert share["value"] == pytest.approx(0.15) and share["passed"] is True
    assert find("seed pipeline's", "dymn04", "b1_2s")["passed"] is None  # not run
    assert find("RSS", "mn10", "1 h recording")["passed"] is True  # 1000 MiB = 1.05 GB < 1.5 GB
    assert find("real time", "mn10", "1 h recording")["passed"] is True
    results["targets"] = rows
    text = report.render(results)
    assert "- machine: cpu (avx2 avx512_vnni), 2 logical cores" in text
    assert "Smoke run" in text and "| `b8_10s` | `seed` |" in text and "**pass**" in text
    assert np.isfinite(results["models"]["mn04"]["frontend_share"]["b1_2s"]["tflite_frontend_over_e2e"])
    assert "| `m_10s_int8.tflite` | 310/320 | 0.969 |" in text


def test_with_onednn_off_the_savedmodel_must_beat_the_seed_by_a_fifth() -> None:
    results = _fake_results()
    results["settings"]["onednn_enabled"] = False
    rows = [r for r in targets.evaluate(results) if r["model"] == "mn04" and r["input"] == "b8_10s"]
    (seed,) = [r for r in rows if "seed pipeline's" in r["target"]]
    assert seed["threshold"] == 1.2 and seed["passed"] is True  # 400 / 300 = 1.33
    assert not [r for r in rows if "onnxruntime" in r["target"]]  # the onnxruntime targets are oneDNN-on ones


def test_the_any_batch_route_runs_only_batched_inputs() -> None:
    model = MODELS["mn04"]
    keys = catalog.required_artifacts(model, ["tflite_float32_batch"], INPUT_SPECS.values())
    assert keys == ["tflite_float32_batch/10s"]


def test_missing_package_stops_the_run_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.bench import __main__ as bench_main

    monkeypatch.setitem(bench_main.ROUTE_PACKAGES, "seed", "no_such_package_for_eat_keras")
    with pytest.raises(SystemExit, match="seed needs no_such_package_for_eat_keras"):
        bench_main.check_packages(["savedmodel", "seed"])
    bench_main.check_packages(["savedmodel"])  # routes without extra packages start
