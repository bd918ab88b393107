"""Results JSON → markdown report. Also ``python -m tools.bench.report RESULTS.json [OUT.md]`` to
re-render a report without re-running anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tools.bench.catalog import ROUTE_DEFS
from tools.bench.machine import CPU_FEATURES


def _f(x: float | None, fmt: str = ".1f", suffix: str = "") -> str:
    return "–" if x is None else f"{x:{fmt}}{suffix}"


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """``align``: one of l/r per column."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _target_value(row: dict[str, Any]) -> str:
    v = row["value"]
    if v is None:
        return "–"
    if row["target"].startswith("front-end"):
        return f"{v:.1%}"
    if "RSS" in row["target"]:
        return f"{v / 1e9:.2f} GB"
    if "real time" in row["target"]:
        return f"{v:.0f}×"
    return f"{v:.2f}×"


def _threshold(row: dict[str, Any]) -> str:
    op = "≤" if row["better"] == "le" else "≥"
    t = row["threshold"]
    if row["target"].startswith("front-end"):
        return f"{op} {t:.0%}"
    if "RSS" in row["target"]:
        return f"< {t / 1e9:.1f} GB"
    return f"{op} {t:g}×"


def _verdict(row: dict[str, Any]) -> str:
    if row["passed"] is None:
        return "not run"
    verdict = "**pass**" if row["passed"] else "**FAIL**"
    return verdict + (" (reported, no target)" if row["report_only"] else "")


def _onednn(settings: dict[str, Any]) -> str:
    enabled = settings.get("onednn_enabled")
    if enabled is None:
        return ""
    how = {"on": "TF_ENABLE_ONEDNN_OPTS=1", "off": "TF_ENABLE_ONEDNN_OPTS=0"}.get(settings.get("onednn", "default"),
                                                                             "TensorFlow's choice for this CPU")
    return f" and its oneDNN kernels {'on' if enabled else 'off'} ({how})"


def _features(machine: dict[str, Any]) -> str:
    features = machine.get("cpu_features")  # absent in runs before 2026-11-26
    return f" ({' '.join(features) if features else 'none of ' + '/'.join(CPU_FEATURES)})" if features is not None else ""


def _header(results: dict[str, Any]) -> list[str]:
    m, s = results["machine"], results["settings"]
    lines = ["# eat-keras benchmarks", ""]
    if s.get("smoke"):
        lines += [f"> **Smoke run** ({s['runs']} timed calls per cell, fewer than 30): these numbers check that the "
                  "benchmark works; they are not the project's figures.", ""]
    lines += [
        "Produced by:", "", "```", m["command"], "```", "",
        f"- date: {m['date']}; commit {m['git_commit']}",
        f"- machine: {m['cpu']}{_features(m)}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
        f"{_f(m['ram_gib'])} GiB RAM, {m['platform']}, Python {m['python']}; load average at start "
        + ", ".join(f"{x:.2f}" for x in m.get("load_average_at_start") or []),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        (f"- models {', '.join(s['models'])}; inputs {', '.join(s['inputs'])}; " if s["models"] else "- ")
        + f"routes {', '.join(s['routes'])}",
        f"- timing: {s['warmup']} warm-up + {s['runs']} timed calls per (route, input), all routes of a model "
        f"alternating call by call (round-robin) in one process; each timed call comes after at least "
        f"{_f(s.get('lead_in_s'), '.2f')} s of untimed calls of the same route and input, so that no route pays for the "
        f"spinning idle threads of the route before it; LiteRT (XNNPACK) and onnxruntime with "
        f"{s['threads']} threads, TensorFlow with its defaults{_onednn(s)}. Load time and peak RSS: a fresh process per "
        f"(route, input) that loads the artifact and makes 1 + {s['probe_calls']} calls.",
        "",
        "Inputs (real audio, `golden/clips`): " + "; ".join(
            f"`{k}` = batch {v['batch']} × {v['seconds']} s ({', '.join(dict.fromkeys(v['clips']))})"
            for k, v in results["inputs"].items()) + ".",
        "",
    ]
    return lines


def _targets(results: dict[str, Any]) -> list[str]:
    rows = [[r["target"], r["model"], r["input"], _target_value(r), _threshold(r), _verdict(r), r["detail"]]
            for r in results.get("targets", [])]
    return ["## Targets", ""] + _table(["target", "model", "input", "measured", "target", "result", "detail"], rows, "lllrrll")


def _latency(model: dict[str, Any], inputs: list[str]) -> list[str]:
    rows = []
    for inp in inputs:
        for name, route in model["routes"].items():
            cell = route["inputs"].get(inp)
            if not cell or "stats" not in cell:
                continue
            st = cell["stats"]
            rows.append([f"`{inp}`", f"`{name}`", route["scope"].split(" (")[0], _f(st["median_ms"]),
                         f"{st['p10_ms']:.1f}–{st['p90_ms']:.1f}", _f(st["min_ms"]), _f(st["clips_per_s"]),
                         cell.get("batch_mode") or ""])
    return ["Latency per call (ms; p10–p90 over the timed calls):", ""] + _table(
        ["input", "route", "scope", "median", "p10–p90", "min", "clips/s", "batch > 1"], rows, "lllrrrrl")


def _probes(model: dict[str, Any], inputs: list[str]) -> list[str]:
    rows = []
    for inp in inputs:
        for name, route in model["routes"].items():
            p = (route["inputs"].get(inp) or {}).get("probe")
            if not p:
                continue
            if "error" in p:
                rows.append([f"`{inp}`", f"`{name}`", "", "", "", "", p["error"][:200].replace("\n", " ")])
                continue
            rows.append([f"`{inp}`", f"`{name}`", p["runtime"], _f(p["import_s"] * 1e3, ".0f"), _f(p["load_s"] * 1e3, ".0f"),
                         _f(p["first_call_s"] * 1e3), f"{p['peak_rss_mb']:.0f} ({p['rss_after_import_mb']:.0f})"])
    if not rows:
        return []
    return ["Fresh process per (route, input): runtime import, artifact load, first call (ms); peak RSS "
            "(RSS after the runtime import) in MiB. LiteRT probes load the file without importing TensorFlow:", ""] + _table(
        ["input", "route", "runtime", "import", "load", "first call", "peak RSS (after import)"], rows, "lllrrrr")


def _shares(model: dict[str, Any]) -> list[str]:
    rows = [[f"`{inp}`", _f(s["tflite_frontend_over_e2e"], ".1%"), _f(s["tflite_1_minus_model_only_over_e2e"], ".1%"),
             _f(s["savedmodel_log_mel_over_e2e"], ".1%")] for inp, s in model.get("frontend_share", {}).items()]
    return ["Front-end share of end-to-end time:", ""] + _table(
        ["input", "TFLite f32: front-end only / e2e", "TFLite f32: 1 − model only / e2e", "SavedModel: log_mel / serving_default"],
        rows, "lrrr")


def _checks(model: dict[str, Any]) -> list[str]:
    lines = []
    for name, per_input in model.get("checks", {}).items():
        if isinstance(per_input, dict):
            lines.append(f"- `{name}`: " + ", ".join(f"{k} {v:.2e}" for k, v in per_input.items()))
        else:
            lines.append(f"- `{name}`: {per_input}")
    return (["Numerical checks, max |difference| on the same input:", "", *lines, ""]) if lines else []


def _build(model: dict[str, Any]) -> list[str]:
    build = model["build"]
    rows = []
    for key, e in build["artifacts"].items():
        size = _f(e["size_bytes"] / 1e6, ".2f") if e.get("size_bytes") else ""
        status = (e.get("error") or "").replace("\n", " ")[:300] or e.get("note", "")
        rows.append([f"`{key}`", _f(e.get("seconds")), size, "yes" if e.get("cached") else "", status])
    for step, e in build.get("steps", {}).items():
        rows.append([f"({step})", _f(e["seconds"]), "", "yes" if e.get("cached") else "", ""])
    return ["Conversion / export (wall s; `cached`: made by an earlier run into the work dir, its time):", ""] + _table(
        ["artifact", "seconds", "MB", "cached", "note / error"], rows, "lrrll")


def _errors(model: dict[str, Any]) -> list[str]:
    lines = []
    for name, route in model["routes"].items():
        if route.get("error"):
            lines.append(f"- `{name}`: {route['error'][:1500]}")
        for inp, cell in route["inputs"].items():
            if "error" in cell:
                lines.append(f"- `{name}` `{inp}`: {cell['error'][:800]}")
    return (["Failures:", "", *lines, ""]) if lines else []


def _model(name: str, model: dict[str, Any], inputs: list[str]) -> list[str]:
    lines = [f"## {name}", ""]
    if "error" in model:
        return lines + [f"Failed: {model['error']}", ""]
    lines += [f"Preset `{model['preset']}`; weights {model['weights']}; upstream ONNX `{model['upstream_onnx']}` "
              f"({model['onnx_shape']}).", ""]
    for part in (_latency(model, inputs), _shares(model), _checks(model), _probes(model, inputs), _build(model),
                 _errors(model)):
        lines += part
    return lines


def _tag_hour(tag: dict[str, Any] | None, title: str = "## Tagging a long recording (mn10, CLI)") -> list[str]:
    if not tag:
        return []
    lines = [title, "", "```", tag["command"], "```", ""]
    if tag["exit_code"] != 0:
        return lines + [f"Failed with exit code {tag['exit_code']}; see `{tag['log']}`.", ""]
    return lines + [
        f"- recording: {tag['audio_s']:.0f} s ({tag['recording']}), {tag['windows']} windows tagged "
        f"(expected {tag['expected_windows']})",
        f"- wall time {tag['wall_s']:.1f} s (CLI start-up included) → {tag['realtime_factor']:.0f}× real time; "
        f"CPU user {tag['user_cpu_s']:.1f} s, system {tag['system_cpu_s']:.1f} s"
        + (f" (the median of {len(tag['wall_s_runs'])} runs: "
           + ", ".join(f"{w:.1f}" for w in tag["wall_s_runs"]) + " s)" if len(tag.get("wall_s_runs", [])) > 1 else ""),
        *([f"- for scale: the same command on one 10 s window takes {tag['one_window_wall_s']:.1f} s "
           "(imports, model loading, first call)"] if tag.get("one_window_wall_s") else []),
        f"- peak RSS of the CLI process: {tag['peak_rss_mb']:.0f} MiB ({tag['peak_rss_mb'] * 1024**2 / 1e9:.2f} GB)"
        + (" (the highest of the runs)" if len(tag.get("wall_s_runs", [])) > 1 else ""),
        "",
    ]


def _agreement(agreement: dict[str, Any] | None) -> list[str]:
    if not agreement:
        return []
    lines = ["## Quantized files vs Keras: ESC-10 zero-shot top-1 agreement (mn04)", ""]
    if "error" in agreement:
        return lines + [f"Failed: {agreement['error']}", ""]
    lines += [f"All {agreement['clips']} clips, scores averaged over each clip's windows. Full int8 calibrated on "
              f"{agreement['calibration_summary']}. Export of all files: {agreement['export_s']:.0f} s.", ""]
    rows = [[f"`{c['file']}`", f"{c['agree']}/{c['clips']}", f"{c['top1_agreement']:.3f}", f"{c['max_abs_score_diff']:.4f}"]
            for c in agreement["files"].values()]
    return lines + _table(["file", "agree", "top-1 agreement", "max |Δscore|"], rows, "lrrr")


def _legend() -> list[str]:
    rows = [[f"`{d.name}`", d.label, d.scope] for d in ROUTE_DEFS.values()]
    return ["## Routes", ""] + _table(["route", "what", "scope"], rows, "lll")


def render(results: dict[str, Any]) -> str:
    inputs = list(results.get("inputs", {}))
    lines = _header(results) + _targets(results) + _legend()
    for name, model in results.get("models", {}).items():
        lines += _model(name, model, inputs)
    lines += _tag_hour(results.get("tag_hour"), "## Tagging a long recording (mn10 float32 .tflite, CLI)")
    lines += _tag_hour(results.get("tag_hour_keras"), "### The same with the mn10 .pt (Keras model on TensorFlow)")
    lines += _agreement(results.get("agreement"))
    if "total_wall_s" in results:
        lines += [f"Whole run: {results['total_wall_s'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2:
        print("usage: python -m tools.bench.report RESULTS.json [OUT.md]", file=sys.stderr)
        return 2
    text = render(json.loads(Path(argv[0]).read_text()))
    if len(argv) == 2:
        Path(argv[1]).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
