"""Derived figures (front-end shares) and the issue's targets, evaluated from the raw results.

Every target compares medians of routes timed in the same round-robin loop. A target whose routes or
inputs were not run (partial runs) is listed with ``pass: null`` and the reason.
"""

from __future__ import annotations

from typing import Any

FOUR_MODELS = ("mn04", "mn10", "dymn04", "dymn10")
BATCH1_INPUTS = ("b1_10s", "b1_2s")
TAG_SPEED_MIN = 500.0  # × real time
TAG_RSS_MAX_BYTES = 1.5e9  # "1.5 GB"
ORT_FACTOR_MAX = 1.15  # SavedModel end to end vs onnxruntime's model alone, batch 8 × 10 s
SAVEDMODEL_FRONTEND_SHARE_MAX = 0.20
SEED_FACTOR_ONEDNN_OFF = 1.2  # SavedModel throughput vs the seed pipeline's, TensorFlow's oneDNN off
INT8_AGREEMENT_MIN = 0.95
AGREEMENT_WINDOWS = (1.0, 10.0)
BATCH_ROUTE = "tflite_float32_batch"


def median_ms(results: dict[str, Any], model: str, route: str, inp: str) -> float | None:
    cell = results.get("models", {}).get(model, {}).get("routes", {}).get(route, {}).get("inputs", {}).get(inp)
    return cell["stats"]["median_ms"] if cell and cell.get("stats") else None


def frontend_shares(results: dict[str, Any], model: str) -> dict[str, dict[str, float | None]]:
    """Per input: TFLite front-end-only / end-to-end float32, 1 − model-only / end-to-end, and the
    SavedModel's log_mel signature / serving_default."""
    inputs = results["models"][model].get("inputs_run", [])
    shares: dict[str, dict[str, float | None]] = {}
    for inp in inputs:
        def ratio(num: str, den: str) -> float | None:
            return _ratio(median_ms(results, model, num, inp), median_ms(results, model, den, inp))

        model_only = ratio("tflite_model_only", "tflite_float32")
        shares[inp] = {
            "tflite_frontend_over_e2e": ratio("tflite_frontend", "tflite_float32"),
            "tflite_1_minus_model_only_over_e2e": None if model_only is None else 1.0 - model_only,
            "savedmodel_log_mel_over_e2e": ratio("savedmodel_frontend", "savedmodel"),
        }
    return shares


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _row(target: str, model: str, inp: str, value: float | None, threshold: float, better: str,
         detail: str, report_only: bool = False) -> dict[str, Any]:
    """``better``: "le" (pass when value ≤ threshold) or "ge"; value None: not measured."""
    passed = None if value is None else (value <= threshold if better == "le" else value >= threshold)
    return {
        "target": target, "model": model, "input": inp, "value": value, "threshold": threshold,
        "better": better, "passed": passed, "report_only": report_only,
        "detail": detail if value is not None else "not measured in this run",
    }


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} ms"


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *_savedmodel_targets(results), *_tflite_latency_targets(results), *_frontend_targets(results),
        *_batch_targets(results), *_agreement_targets(results), *_tag_targets(results),
    ]  # fmt: skip


def _savedmodel_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Throughput against the seed pipeline (≥ 1× with TensorFlow's default kernels, ≥ 1.2× with
    oneDNN off), and, with oneDNN on, against onnxruntime's model alone and the front-end's share."""
    onednn = results.get("settings", {}).get("onednn_enabled") is not False
    seed_min = 1.0 if onednn else SEED_FACTOR_ONEDNN_OFF
    rows = []
    for model in FOUR_MODELS:
        sm, seed = (median_ms(results, model, r, "b8_10s") for r in ("savedmodel", "seed"))
        rows.append(_row(f"SavedModel end-to-end throughput, batch 8 × 10 s, ≥ {seed_min:g}× the seed pipeline's (× seed)",
                         model, "b8_10s", _ratio(seed, sm), seed_min, "ge",
                         f"SavedModel {_ms(sm)} vs seed {_ms(seed)} per batch"))
    if not onednn:
        return rows
    for model in ("mn04", "mn10"):
        sm, ort, fe = (median_ms(results, model, r, "b8_10s") for r in ("savedmodel", "onnxruntime", "savedmodel_frontend"))
        rows.append(_row(f"SavedModel end-to-end time, batch 8 × 10 s, ≤ {ORT_FACTOR_MAX:g}× onnxruntime's model-only time",
                         model, "b8_10s", _ratio(sm, ort), ORT_FACTOR_MAX, "le",
                         f"SavedModel {_ms(sm)} vs onnxruntime {_ms(ort)} per batch"))
        rows.append(_row(f"SavedModel front-end (log_mel signature) ≤ {SAVEDMODEL_FRONTEND_SHARE_MAX:.0%} of end-to-end, "
                         "batch 8 × 10 s", model, "b8_10s", _ratio(fe, sm), SAVEDMODEL_FRONTEND_SHARE_MAX, "le",
                         f"log_mel {_ms(fe)} / serving_default {_ms(sm)}"))
    return rows


def _tflite_latency_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for model in FOUR_MODELS:
        for inp in BATCH1_INPUTS:
            lite, seed = (median_ms(results, model, r, inp) for r in ("tflite_float32", "seed"))
            rows.append(_row("TFLite float32 end-to-end latency ≤ 0.5 × seed pipeline's", model, inp,
                             _ratio(lite, seed), 0.5, "le", f"TFLite {_ms(lite)} vs seed {_ms(seed)}"))
    for model in ("mn04", "mn10"):
        for inp in BATCH1_INPUTS:
            lite, o2t = (median_ms(results, model, r, inp) for r in ("tflite_float32", "onnx2tf"))
            rows.append(_row("TFLite float32 end-to-end latency ≤ 1.2 × onnx2tf TFLite (model only)", model, inp,
                             _ratio(lite, o2t), 1.2, "le", f"TFLite {_ms(lite)} vs onnx2tf {_ms(o2t)}"))
    for model, report_only in (("dymn04", False), ("dymn10", True)):
        lite, ort = (median_ms(results, model, r, "b1_2s") for r in ("tflite_float32", "onnxruntime"))
        rows.append(_row("TFLite float32 end-to-end latency (2 s) ≤ 0.8 × onnxruntime model-only, [1,1,128,200] ONNX",
                         model, "b1_2s", _ratio(lite, ort), 0.8, "le", f"TFLite {_ms(lite)} vs onnxruntime {_ms(ort)}",
                         report_only=report_only))
    return rows


def _frontend_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for model, limit in (("mn10", 0.10), ("mn04", 0.20)):
        shares = results.get("models", {}).get(model, {}).get("frontend_share", {})
        for inp in BATCH1_INPUTS:
            share = shares.get(inp, {})
            alt = share.get("tflite_1_minus_model_only_over_e2e")
            fe, e2e = (median_ms(results, model, r, inp) for r in ("tflite_frontend", "tflite_float32"))
            rows.append(_row(f"front-end ≤ {limit:.0%} of end-to-end time (TFLite float32)", model, inp,
                             share.get("tflite_frontend_over_e2e"), limit, "le",
                             f"front-end only {_ms(fe)} / end-to-end {_ms(e2e)}"
                             + ("" if alt is None else f"; 1 − model-only/e2e = {alt:.1%}")))
    return rows


def _batch_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The any-batch file, one invoke per batch, against the batch-1 file invoked once per example."""
    rows = []
    for model in FOUR_MODELS:
        batch, single = (median_ms(results, model, r, "b8_10s") for r in (BATCH_ROUTE, "tflite_float32"))
        rows.append(_row("TFLite float32, batch 8 × 10 s in one invoke: throughput ≥ 8 sequential batch-1 invokes' "
                         "(× sequential)", model, "b8_10s", _ratio(single, batch), 1.0, "ge",
                         f"one invoke {_ms(batch)} vs 8 invokes {_ms(single)}"))
    return rows


def _agreement_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Full int8 vs Keras, zero-shot top-1 on ESC-10 (:mod:`tools.bench.agreement`)."""
    agreement = results.get("agreement") or {}
    rows = []
    for seconds in AGREEMENT_WINDOWS:
        cell = agreement.get("files", {}).get(f"int8/{seconds:g}s") or {}
        value = cell.get("top1_agreement")
        detail = (f"{cell.get('agree')}/{cell.get('clips')} clips; calibrated on {agreement.get('calibration_summary')}"
                  if value is not None else "")
        rows.append(_row(f"full int8 top-1 agreement with Keras, ESC-10 zero-shot (all clips), ≥ {INT8_AGREEMENT_MIN:g}",
                         agreement.get("model", "mn04"), f"{seconds:g} s windows", value, INT8_AGREEMENT_MIN, "ge", detail))
    return rows


def _tag_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    tag = results.get("tag_hour") or {}
    ok = tag.get("exit_code") == 0
    length = tag.get("audio_s", 3600)
    hours = "1 h recording" if length == 3600 else f"{length:.0f} s recording"
    smoke = " (shorter than one hour: smoke run)" if ok and tag["audio_s"] < 3600 else ""
    rows.append(_row("eat-keras tag --window 10 --hop 10: ≥ 500× real time", "mn10", hours,
                     tag["realtime_factor"] if ok else None, TAG_SPEED_MIN, "ge",
                     f"{tag.get('audio_s', 0):.0f} s of audio in {tag.get('wall_s', 0):.1f} s wall{smoke}"))
    rows.append(_row("eat-keras tag: peak RSS < 1.5 GB", "mn10", hours,
                     tag["peak_rss_mb"] * 1024**2 if ok else None, TAG_RSS_MAX_BYTES, "le",
                     f"peak RSS {tag.get('peak_rss_mb', 0):.0f} MiB{smoke}"))
    return rows
