"""Where the time of an eat-keras TFLite file goes, stage by stage, on LiteRT/XNNPACK. Run by hand
from the repo root (not in CI); it needs no ../shared (weights are random: timing does not depend
on their values)::

    python -m tools.bench.profile --preset mn10_as --seconds 10
    python -m tools.bench.profile --preset mn04_as --seconds 2 --part frontend --runs 100

LiteRT's Python API has no per-operator profiler, and XNNPACK runs a delegated graph as one node.
So a stage is timed as a difference: the graph is converted once per cut (after each stage), every
cut file is timed round-robin in one process (:func:`tools.bench.timing.round_robin`), and a stage
costs its cut's median minus the previous cut's. The multiply-accumulates of each stage are counted
in the converted files, and one large FULLY_CONNECTED is timed in the same loop: the table shows
each stage's throughput next to the machine's practical peak.

Front-end cuts follow :func:`eat_keras.frontend_dft.factored_log_mel` (hop rows, then per piece of
frames stage 1, stage 2, power, mel projection, then log and normalisation); network cuts follow
``forward_features`` (stem, each block, last conv) and the head. A cut's outputs are the first
element of each tensor it ends on, so that the tensors it ends on stay intermediates in the arena,
as they are in the whole graph, rather than graph outputs with buffers of their own.

Stage times are differences of medians and carry the noise of both: two runs of the 10 s front-end
at 100 rounds each, on this shared machine, gave the same stage up to 0.3 ms apart. Read one stage
with care, sums of several with less.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tools.bench.timing import round_robin  # noqa: E402

#: the peak probe: [rows, depth] x [depth, depth], one FULLY_CONNECTED (~1.1 G multiply-accumulates
#: against a 4 MB input, so that copying the input in is ~1 % of the call)
PEAK_GEMM = (1024, 1024)

_MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")


def count_macs(model: bytes) -> int:
    """Multiply-accumulates of the convolutions and matmuls of a ``.tflite`` with static shapes."""
    from eat_keras.export.tflite import operator_code_name, read_model

    obj = read_model(model)
    total = 0
    for subgraph in obj.subgraphs:
        shapes = [list(t.shape) if t.shape is not None else [] for t in subgraph.tensors]
        for op in subgraph.operators:
            name = operator_code_name(obj.operatorCodes[op.opcodeIndex])
            if name not in _MAC_OPS:
                continue
            outputs = int(np.prod(shapes[op.outputs[0]]))
            first, second = shapes[op.inputs[0]], shapes[op.inputs[1]]
            if name == "CONV_2D":  # filter [out, kh, kw, in per group]
                per_output = int(np.prod(second[1:]))
            elif name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, channels]
                per_output = second[1] * second[2]
            elif name == "FULLY_CONNECTED":  # weights [out, depth]
                per_output = second[-1]
            else:  # BATCH_MATMUL: the contracted axis of the left operand
                per_output = first[-2] if op.builtinOptions.adjX else first[-1]
            total += outputs * per_output
    return total


def _first_elements(outputs: Any) -> Any:
    import tensorflow as tf

    if isinstance(outputs, (list, tuple)):
        return [_first_elements(x) for x in outputs]
    return tf.reshape(outputs, [-1])[:1]


def _convert(function: Callable[..., Any], input_shape: Sequence[int], module: Any = None) -> bytes:
    import tensorflow as tf

    signature = [tf.TensorSpec(input_shape, tf.float32)]
    concrete = tf.function(function, input_signature=signature, autograph=False).get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], module).convert()


def frontend_cuts(config: Any, num_samples: int) -> list[tuple[str, Callable[[Any], Any]]]:
    """(stage name, waveform ``[1, N]`` → the outputs after that stage), in order."""
    from eat_keras import frontend_dft as dft

    plan = dft.make_plan(config)
    pieces = dft.frame_pieces(config.num_frames(num_samples))

    def per_piece(step: Callable[[Any, int, int], Any]) -> Callable[[Any], list[Any]]:
        def cut(waveform: Any) -> list[Any]:
            signal = dft.hop_rows(waveform, config, plan)
            return [step(signal, first, last) for first, last in pieces]

        return cut

    def stage1(signal: Any, first: int, last: int) -> Any:
        return dft.stage1(signal, plan, first, last)

    def stage2(signal: Any, first: int, last: int) -> Any:
        return dft.stage2(stage1(signal, first, last), plan)

    def power(signal: Any, first: int, last: int) -> Any:
        return dft.power_spectrum(stage2(signal, first, last), plan)

    def mel(signal: Any, first: int, last: int) -> Any:
        return dft.mel_projection(power(signal, first, last), plan)

    return [
        ("pre-emphasis, reflect pad, hop rows", lambda waveform: dft.hop_rows(waveform, config, plan)),
        ("stage 1: grouped conv + transpose", per_piece(stage1)),
        ("stage 2: matmul", per_piece(stage2)),
        ("power + transpose", per_piece(power)),
        ("mel projection (banded matmuls)", per_piece(mel)),
        ("concat, log, normalise", lambda waveform: dft.factored_log_mel(waveform, config, plan)),
    ]


def network_cuts(net: Any) -> list[tuple[str, Callable[[Any], Any]]]:
    """(stage name, log-mel ``[1, n_mels, frames, 1]`` → the output after that stage), in order."""

    def upto(blocks: int, last_conv: bool = False, head: bool = False) -> Callable[[Any], Any]:
        def cut(mel: Any) -> Any:
            x = net.stem(mel, training=False)
            for block in net.blocks[:blocks]:
                x = block(x, training=False)
            if last_conv:
                x = net.last_conv(x, training=False)
            return net.forward_head(x, training=False)["logits"] if head else x

        return cut

    cuts = [("stem", upto(0))]
    for index, block in enumerate(net.blocks):
        spec = getattr(block, "spec", None)
        channels = f" {spec.in_channels}>{spec.expanded_channels}>{spec.out_channels}" if spec else ""
        kernel = f" k{spec.kernel_size} s{spec.stride}" if spec else ""
        cuts.append((f"block {index}{channels}{kernel}", upto(index + 1)))
    count = len(net.blocks)
    return cuts + [("last conv", upto(count, last_conv=True)), ("head", upto(count, last_conv=True, head=True))]


def profile(
    cuts: list[tuple[str, Callable[[Any], Any]]], input_shape: Sequence[int], runs: int, module: Any = None
) -> list[dict[str, Any]]:
    """Convert every cut, time all of them (and the peak probe) round-robin; one row per stage."""
    from eat_keras.litert import make_interpreter

    files = {name: _convert(lambda x, fn=fn: _first_elements(fn(x)), input_shape, module) for name, fn in cuts}
    rows, depth = PEAK_GEMM
    weights = np.random.default_rng(1).standard_normal((depth, depth)).astype(np.float32)
    files["peak"] = _convert(lambda x: x @ weights, (rows, depth))
    rng = np.random.default_rng(0)
    calls = {}
    for name, model in files.items():
        interpreter = make_interpreter(model)
        (detail,) = interpreter.get_input_details()
        data = rng.standard_normal(detail["shape"]).astype(np.float32) * 0.1

        def call(interpreter: Any = interpreter, index: int = detail["index"], data: np.ndarray = data) -> None:
            interpreter.set_tensor(index, data)
            interpreter.invoke()

        calls[(name, "")] = call
    times = round_robin(calls, runs=runs, warmup=3)
    medians = {name: float(np.median(times[(name, "")])) * 1e3 for name in files}
    macs = {name: count_macs(model) for name, model in files.items()}
    table, previous_ms, previous_macs = [], 0.0, 0
    for name, _ in cuts:
        stage_ms, stage_macs = medians[name] - previous_ms, macs[name] - previous_macs
        table.append({
            "stage": name,
            "cumulative_ms": medians[name],
            "stage_ms": stage_ms,
            "stage_mmac": stage_macs / 1e6,
            "gmac_per_s": stage_macs / stage_ms / 1e6 if stage_ms > 0 and stage_macs else None,
        })
        previous_ms, previous_macs = medians[name], macs[name]
    table.append({
        "stage": f"peak probe: FULLY_CONNECTED [{rows}, {depth}] x [{depth}, {depth}]",
        "cumulative_ms": None,
        "stage_ms": medians["peak"],
        "stage_mmac": macs["peak"] / 1e6,
        "gmac_per_s": macs["peak"] / medians["peak"] / 1e6,
    })
    return table


def markdown(title: str, table: list[dict[str, Any]]) -> str:
    def fmt(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    lines = [f"### {title}", "", "| stage | cumulative ms | stage ms | stage M MAC | GMAC/s |"]
    lines.append("|---|---:|---:|---:|---:|")
    for row in table:
        lines.append(
            f"| {row['stage']} | {fmt(row['cumulative_ms'], 3)} | {fmt(row['stage_ms'], 3)} "
            f"| {fmt(row['stage_mmac'], 1)} | {fmt(row['gmac_per_s'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mn10_as", help="model preset (its config; random weights)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--part", nargs="+", choices=("frontend", "network"), default=["frontend", "network"])
    parser.add_argument("--runs", type=int, default=40, help="timed rounds (each cut once per round)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from eat_keras.litert import NUM_THREADS
    from eat_keras.models.network import EfficientATNet
    from eat_keras.presets import get_preset

    config = get_preset(args.preset).config
    frontend = config.frontend
    num_samples = int(round(args.seconds * frontend.sample_rate))
    frames = frontend.num_frames(num_samples)
    header = f"{args.preset}, {args.seconds:g} s ({frames} frames), batch 1, LiteRT/XNNPACK {NUM_THREADS} threads"
    if "frontend" in args.part:
        table = profile(frontend_cuts(frontend, num_samples), (1, num_samples), args.runs)
        print(markdown(f"Front-end: {header}, median of {args.runs}", table))
    if "network" in args.part:
        net = EfficientATNet(config).build_for_inference()
        table = profile(network_cuts(net), (1, frontend.n_mels, frames, 1), args.runs, module=net)
        print(markdown(f"Network: {header}, median of {args.runs}", table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
