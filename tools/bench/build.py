"""Make (or reuse) the artifacts of one model and time each conversion; writes ``<work>/<model>/manifest.json``.

Run by ``python -m tools.bench`` in a subprocess per model, so that the Keras model, the TFLite
converter and torch never live in the process that is timed. Each manifest entry records the file,
the wall time of the step that made it, whether it was reused from an earlier run (``cached``: the
time is then that run's) and the error text where a step failed (the others still run).

    python -m tools.bench.build --model mn04 --work-dir build/bench --keys savedmodel tflite_float32/10s
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tools.bench import onnx2tf_route, paths  # noqa: E402
from tools.bench.catalog import onnx_key  # noqa: E402
from tools.bench.inputs import HOP_LENGTH, SAMPLE_RATE  # noqa: E402
from tools.bench.models import DYMN_ONNX_SHAPE, MODELS, BenchModel  # noqa: E402

MANIFEST = "manifest.json"
N_MELS = 128


def _hash_files(files: list[Path], extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in sorted(files):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _window_seconds(key: str) -> int:
    return int(re.fullmatch(r".*/(\d+)s", key).group(1))  # type: ignore[union-attr]


def _frames(seconds: int) -> int:
    return 1 + (seconds * SAMPLE_RATE - 1) // HOP_LENGTH


class Builder:
    """Builds manifest keys on demand; the eat-keras tagger is loaded once, at first need."""

    def __init__(self, model: BenchModel, work_dir: Path, o2t_venv: Path, rebuild: bool, log: Callable[[str], None]):
        self.model = model
        self.work_dir = work_dir
        self.model_dir = work_dir / model.name
        self.o2t_venv = o2t_venv
        self.log = log
        self.manifest_path = self.model_dir / MANIFEST
        self.entries: dict[str, dict[str, Any]] = {}
        self.steps: dict[str, dict[str, Any]] = {}  # timed steps that make no artifact of their own
        if self.manifest_path.is_file() and not rebuild:
            earlier = json.loads(self.manifest_path.read_text())
            self.entries, self.steps = earlier["artifacts"], earlier.get("steps", {})
        elif rebuild:
            shutil.rmtree(self.model_dir, ignore_errors=True)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self._tagger: Any = None
        self._fingerprints: dict[str, str] = {}

    # -- bookkeeping ---------------------------------------------------------------------------------

    def _fingerprint(self, key: str) -> str:
        """What an artifact depends on besides its key: the weights, and the code that converts them
        (eat-keras' sources for its exports; the torch reference for ONNX; plus onnx2tf's version).
        A cached artifact whose fingerprint changed is rebuilt, so a run never mixes eat-keras
        versions. (Edits of this file are not tracked: use --rebuild after changing a conversion.)"""
        if key not in self._fingerprints:
            bench = Path(__file__).parent
            weights = self.model.weight_file(self.work_dir)
            stamp = f"{weights}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights.is_file() else ""
            kind = key.split("/")[0]
            if kind in ("onnx", "onnx2tf"):
                files = [paths.TORCH_REFERENCE, bench / "onnx_export.py"]
                if kind == "onnx2tf":
                    files.append(bench / "onnx2tf_route.py")
                    stamp += onnx2tf_route.version(self.o2t_venv)
            else:
                import eat_keras

                files = list(Path(eat_keras.__file__).parent.rglob("*.py"))
            self._fingerprints[key] = _hash_files(files, stamp)
        return self._fingerprints[key]

    def _usable(self, key: str) -> bool:
        entry = self.entries.get(key)
        return bool(
            entry
            and not entry.get("error")
            and entry.get("path")
            and Path(entry["path"]).exists()
            and entry.get("fingerprint") == self._fingerprint(key)
        )

    def _known_failure(self, key: str) -> bool:
        """onnx2tf failures are deterministic for the same ONNX and version, and slow to reproduce."""
        entry = self.entries.get(key)
        return bool(
            key.startswith("onnx2tf/") and entry and entry.get("error")
            and entry.get("fingerprint") == self._fingerprint(key)
        )

    def _record(self, key: str, path: Path | None, seconds: float | None, note: str = "", error: str | None = None) -> None:
        self.entries[key] = {
            "path": str(path) if path else None,
            "seconds": seconds,
            "size_bytes": _size_bytes(path) if path and path.exists() else None,
            "cached": False,
            "note": note,
            "error": error,
            "fingerprint": self._fingerprint(key),
        }
        self._save()

    def _save(self) -> None:
        data = {"model": self.model.name, "artifacts": self.entries, "steps": self.steps}
        tmp = self.manifest_path.with_suffix(".partial")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self.manifest_path)

    def build(self, keys: list[str]) -> None:
        for entry in [*self.entries.values(), *self.steps.values()]:
            entry["cached"] = True
        if self.model.synthetic_files:
            self._make_synthetic_files()
        for key in keys:
            if self._usable(key):
                continue
            if self._known_failure(key):
                self.log(f"{self.model.name}: {key}: reusing the recorded failure (--rebuild retries it)")
                continue
            self.log(f"{self.model.name}: building {key}")
            try:
                self._build_key(key)
            except Exception as exc:  # record and go on: one failed conversion must not stop the run
                self._record(key, None, None, error=f"{type(exc).__name__}: {exc}"[:4000])
                self.log(f"{self.model.name}: {key} failed: {type(exc).__name__}: {str(exc)[:300]}")
                if not isinstance(exc, onnx2tf_route.Onnx2TfError):  # its message already says it all
                    traceback.print_exc(file=sys.stderr)
        self._save()

    def _step(self, name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = fn()
        self.steps[name] = {"seconds": time.perf_counter() - started, "cached": False}
        self._save()
        return result

    # -- inputs of the conversions -----------------------------------------------------------------

    def _make_synthetic_files(self) -> None:
        """Synthetic upstream state dict + its ONNX (torch_reference), made once per work dir."""
        weights, onnx = self.model.weight_file(self.work_dir), self.model.upstream_onnx(self.work_dir)
        if weights.is_file() and onnx.is_file():
            return
        from upstream_reference.torch_reference import make_files  # tests/ is on sys.path: see tools.bench.paths

        self.log(f"{self.model.name}: making synthetic weights and their ONNX export")
        self._step("synthetic_files", lambda: make_files(self.model.preset, self.model.synth_dir(self.work_dir)))

    @property
    def tagger(self) -> Any:
        if self._tagger is None:
            from eat_keras.loading import load_tagger

            source, weights = self.model.eat_keras_source(self.work_dir)
            self._tagger = self._step(
                "load_tagger", lambda: load_tagger(source, weights=weights, labels_file=paths.labels_csv())
            )
        return self._tagger

    # -- one key -------------------------------------------------------------------------------------

    def _build_key(self, key: str) -> None:
        kind = key.split("/")[0]
        if kind == "savedmodel":
            self._savedmodel()
        elif kind.startswith("tflite_") and kind.endswith("_batch"):
            self._tflite(kind.removeprefix("tflite_").removesuffix("_batch"), _window_seconds(key), any_batch=True)
        elif kind.startswith("tflite_") and kind != "tflite_frontend":
            quantization = "float32" if kind == "tflite_logmel" else kind.removeprefix("tflite_")
            self._tflite(quantization, _window_seconds(key))
        elif kind == "tflite_frontend":
            self._tflite_frontend(_window_seconds(key))
        elif kind == "onnx":
            self._onnx(key)
        elif kind == "onnx2tf":
            self._onnx2tf(_window_seconds(key))
        else:
            raise ValueError(f"unknown artifact key {key!r}")

    def _savedmodel(self) -> None:
        from eat_keras.export.saved_model import export_saved_model

        tagger = self.tagger
        out = self.model_dir / "savedmodel"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        path = export_saved_model(tagger, out, self.model.name, version=1)
        self._record("savedmodel", path, time.perf_counter() - started)

    def _tflite(self, quantization: str, seconds: int, any_batch: bool = False) -> None:
        """One export call per (quantization, window, batch kind); the batch-1 float32 call also writes
        the log-mel file (an any-batch call writes the batch-1 file too, which is then not recorded)."""
        from eat_keras.export.tflite import export_tflite

        tagger = self.tagger
        started = time.perf_counter()
        with_log_mel = quantization == "float32" and not any_batch
        artifacts = export_tflite(
            tagger,
            self.model_dir / "tflite",
            self.model.name,
            window_seconds=(float(seconds),),
            quantizations=(quantization,),
            calibration_files=paths.audio_files() if quantization == "int8" else (),
            log_mel=with_log_mel,
            metadata=False,
            any_batch=any_batch,
        )
        elapsed = time.perf_counter() - started
        suffix = "_batch" if any_batch else ""
        for artifact in (a for a in artifacts if a.any_batch == any_batch):
            if artifact.input_kind == "waveform":
                self._record(f"tflite_{quantization}{suffix}/{seconds}s", artifact.path, elapsed,
                             note="float32 time includes the log-mel-input file" if with_log_mel else "")
            else:
                self._record(f"tflite_logmel/{seconds}s", artifact.path, None, note="made by the float32 export call")

    def _tflite_frontend(self, seconds: int) -> None:
        """The front-end alone as a fixed [1, N] float32 TFLite, for the front-end share. It must be
        the formulation the waveform export puts in its files (the factored DFT where the config
        allows it, else the Keras layer's RFFT graph); the operator check below catches a drift."""
        import tensorflow as tf

        from eat_keras.export.tflite import check_builtin_only, operator_names
        from eat_keras.frontend_dft import factored_log_mel, radix_for

        tagger = self.tagger
        config = tagger.config.frontend
        factored = radix_for(config) is not None
        samples = seconds * SAMPLE_RATE
        started = time.perf_counter()

        @tf.function(input_signature=[tf.TensorSpec([1, samples], tf.float32, name="waveform")])
        def front_end(waveform: tf.Tensor) -> dict[str, tf.Tensor]:
            mel = factored_log_mel(waveform, config) if factored else tagger.frontend(waveform, training=False)
            # [1, n_mels, frames, 1], the tensor the network takes: dropping the last axis with a
            # slice would add a STRIDED_SLICE that XNNPACK does not take (~2 ms at 10 s in LiteRT's
            # own kernel), a cost the end-to-end file does not pay
            return {"log_mel": mel}

        # the front-end has no variables: an empty module is all the converter needs to track
        converter = tf.lite.TFLiteConverter.from_concrete_functions([front_end.get_concrete_function()], tf.Module())
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        model = converter.convert()
        check_builtin_only(model)
        path = self.model_dir / "tflite_frontend" / f"{self.model.name}_frontend_{seconds}s_float32.tflite"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model)
        note = "factored DFT" if factored else "RFFT2D (Keras layer)"
        end_to_end = self.entries.get(f"tflite_float32/{seconds}s", {}).get("path")
        if end_to_end and Path(end_to_end).is_file():
            extra = sorted(set(operator_names(model)) - set(operator_names(end_to_end)))
            if extra:
                note += f"; WARNING: ops {extra} are not in the end-to-end float32 file (front-ends differ?)"
        self._record(f"tflite_frontend/{seconds}s", path, time.perf_counter() - started, note=note)

    def _onnx(self, key: str) -> None:
        upstream = self.model.upstream_onnx(self.work_dir)
        if key == "onnx/dynamic":
            self._record(key, upstream, None, note="upstream export, dynamic batch and time")
            return
        batch, frames = (int(v) for v in re.fullmatch(r"onnx/b(\d+)_t(\d+)", key).groups())  # type: ignore[union-attr]
        if (batch, frames) == DYMN_ONNX_SHAPE:
            self._record(key, upstream, None, note="upstream export at [1, 1, 128, 200]")
            return
        from tools.bench.onnx_export import export_fixed_onnx

        config = self.tagger.config  # τ, strides as eat-keras loaded them: both sides the same model
        path = self.model_dir / "onnx" / f"{self.model.name}_b{batch}_t{frames}_opset13.onnx"
        started = time.perf_counter()
        export_fixed_onnx(config, self.model.weight_file(self.work_dir), batch, frames, path)
        self._record(key, path, time.perf_counter() - started, note=f"torch export at [{batch}, 1, 128, {frames}]")

    def _onnx2tf(self, seconds: int) -> None:
        frames = _frames(seconds)
        source_key = onnx_key(self.model, 1, frames)
        if not self._usable(source_key):
            self._build_key(source_key)
        source = Path(self.entries[source_key]["path"])
        out_dir = self.model_dir / "onnx2tf" / f"{seconds}s"
        tflite, elapsed = onnx2tf_route.convert(source, 1, N_MELS, frames, out_dir, self.o2t_venv)
        self._record(f"onnx2tf/{seconds}s", tflite, elapsed, note=f"onnxsim at [1, 1, 128, {frames}] + onnx2tf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--keys", nargs="*", default=[], help="manifest keys to make (see tools.bench.catalog)")
    parser.add_argument("--o2t-venv", type=Path, default=paths.DEFAULT_O2T_VENV)
    parser.add_argument("--rebuild", action="store_true", help="forget earlier artifacts of this model")
    args = parser.parse_args(argv)
    builder = Builder(MODELS[args.model], args.work_dir.resolve(), args.o2t_venv, args.rebuild,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    builder.build(args.keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
