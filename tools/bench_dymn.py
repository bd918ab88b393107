"""Latency of dymn04 vs mn04 (waveform in, 10 s clips) and of DynamicConv formulations. Run by hand:

    python tools/bench_dymn.py                 # model table, batch 1 and 8
    python tools/bench_dymn.py --formulations  # also the DynamicConv alternatives (slow)

Both models run in the same process as ``tf.function`` with an any-batch input signature (as in the
SavedModel: a batch fixed at 1 would take DynamicConv's TFLite-only branch), warmed up, then timed
alternately (mn04, dymn04, mn04, ...) so that machine noise hits both equally; the median is
reported. Weights are random: latency does not depend on their values.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from eat_keras.layers import DynamicConv, builtin_ops_only
from eat_keras.models import build_tagger
from eat_keras.models.blocks import block_specs
from eat_keras.presets import get_preset

SAMPLE_RATE = 32000
CLIP_SECONDS = 10
NUM_KERNELS = 4


def _median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    out = fn()
    _ = out.numpy() if hasattr(out, "numpy") else out  # wait for the result
    return time.perf_counter() - start


def bench_models(batches: list[int], runs: int, warmup: int) -> None:
    names = ("mn04_as", "dymn04_as")
    taggers = {name: build_tagger(get_preset(name).config) for name in names}
    print(f"waveform in, {CLIP_SECONDS} s clips, median of {runs} alternating runs after {warmup} warm-up")
    print(f"{'model':<10} {'batch':>5} {'median ms':>10} {'ms / clip':>10} {'vs mn04':>8}")
    for batch in batches:
        waveform = tf.constant(
            np.random.default_rng(0).uniform(-0.5, 0.5, (batch, SAMPLE_RATE * CLIP_SECONDS)).astype(np.float32)
        )
        fns = {}
        for name, tagger in taggers.items():
            fn = tf.function(
                lambda w, t=tagger: t(w, training=False)["logits"],
                input_signature=[tf.TensorSpec([None, SAMPLE_RATE * CLIP_SECONDS], tf.float32)],
            )
            for _ in range(warmup):
                fn(waveform).numpy()
            fns[name] = fn
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(runs):
            for name in names:
                times[name].append(_timed(lambda f=fns[name]: f(waveform)))
        base = _median_ms(times["mn04_as"])
        for name in names:
            ms = _median_ms(times[name])
            print(f"{name[:-3]:<10} {batch:>5} {ms:>10.1f} {ms / batch:>10.1f} {ms / base:>7.2f}x")


# --- DynamicConv formulations (all exact; see eat_keras/layers/dynamic_conv.py) ----------------------


def _pointwise_stacked(x: tf.Tensor, attention: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Static 1x1 conv to K·C_out channels, weight by the attention, sum over K."""
    k, c_in, c_out = kernel.shape
    stacked = tf.reshape(tf.transpose(kernel, [1, 0, 2]), [1, 1, c_in, k * c_out])
    y = tf.nn.conv2d(x, stacked, 1, "VALID")
    shape = tf.shape(y)
    y = tf.reshape(y, [shape[0], shape[1], shape[2], k, c_out])
    return tf.reduce_sum(y * attention[:, tf.newaxis, tf.newaxis, :, tf.newaxis], axis=3)


def _builtin_ops_only_call(x: tf.Tensor, context: tf.Tensor, layer: DynamicConv) -> tf.Tensor:
    """The layer as traced for an any-batch TFLite graph (its K-wide form)."""
    with builtin_ops_only():
        return layer(x, context)


def _depthwise_multiply_sum(x: tf.Tensor, attention: tf.Tensor, layer: DynamicConv) -> tf.Tensor:
    """Depth multiplier K, then multiply by the attention and sum over K (5-D)."""
    p = (layer.kernel_size - 1) // 2
    y = tf.nn.depthwise_conv2d(
        tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]]), layer.kernel, [1, layer.strides, layer.strides, 1], "VALID"
    )
    shape = tf.shape(y)
    y = tf.reshape(y, [shape[0], shape[1], shape[2], layer.filters, NUM_KERNELS])
    return tf.reduce_sum(y * attention[:, tf.newaxis, tf.newaxis, tf.newaxis, :], axis=4)


def _depthwise_shifted_slices(x: tf.Tensor, attention: tf.Tensor, layer: DynamicConv) -> tf.Tensor:
    """Aggregate per-sample kernels, apply them as k² strided slices times per-sample taps."""
    k, s, c = layer.kernel_size, layer.strides, layer.filters
    p = (k - 1) // 2
    flat = tf.reshape(tf.transpose(layer.kernel, [3, 0, 1, 2]), [NUM_KERNELS, -1])
    per_sample = tf.reshape(tf.matmul(attention, flat), [-1, k, k, c])
    x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
    rows, cols = tf.shape(x)[1] - k + 1, tf.shape(x)[2] - k + 1
    out = 0.0
    for i in range(k):
        for j in range(k):
            out += x[:, i : i + rows : s, j : j + cols : s, :] * per_sample[:, i : i + 1, j : j + 1, :]
    return out


def bench_formulations(batches: list[int], runs: int, warmup: int) -> None:
    """Sum over the 15 dymn04 blocks at 10 s input of each formulation's median time."""
    rng = np.random.default_rng(0)
    print(f"\nDynamicConv formulations, dymn04 shapes, {CLIP_SECONDS} s input, all blocks summed")
    for batch in batches:
        totals: dict[str, float] = {}

        def add(label: str, fn: Callable[..., tf.Tensor], x: tf.Tensor, *rest: object) -> None:
            # the batch traced as unknown, as in the SavedModel (batch 1 would pick TFLite's branch)
            spec = tf.TensorSpec([None, *x.shape[1:]], x.dtype)
            f = tf.function(lambda x: fn(x, *rest), input_signature=[spec])
            for _ in range(warmup):
                f(x)
            totals[label] = totals.get(label, 0.0) + _median_ms([_timed(lambda: f(x)) for _ in range(runs)])

        freq, frames = 64, SAMPLE_RATE * CLIP_SECONDS // 320 // 2  # after the stem: 64 x 500
        for spec in block_specs(0.4):
            attention = tf.constant(rng.dirichlet(np.ones(NUM_KERNELS), batch).astype(np.float32))
            context = tf.constant(rng.standard_normal((batch, 16)).astype(np.float32))
            convs = []
            if spec.has_expansion:
                convs.append((DynamicConv(spec.expanded_channels, 1), spec.in_channels, freq, frames))
            depthwise = DynamicConv(
                spec.expanded_channels, spec.kernel_size, strides=spec.depthwise_stride, depthwise=True
            )
            convs.append((depthwise, spec.expanded_channels, freq, frames))
            p, k, s = (spec.kernel_size - 1) // 2, spec.kernel_size, spec.depthwise_stride
            freq, frames = (freq + 2 * p - k) // s + 1, (frames + 2 * p - k) // s + 1
            convs.append((DynamicConv(spec.out_channels, 1), spec.expanded_channels, freq, frames))
            for layer, channels, f_in, t_in in convs:
                x = tf.constant(rng.standard_normal((batch, f_in, t_in, channels)).astype(np.float32))
                layer(x, context)
                kind = "dw" if layer.depthwise else "1x1"
                add(f"{kind}: the layer (eat_keras DynamicConv)", lambda x, c, l=layer: l(x, c), x, context)
                if layer.depthwise:
                    add("dw: depth multiplier K, matmul over K (builtin_ops_only)", _builtin_ops_only_call, x, context, layer)
                    add("dw: depth multiplier K, multiply + sum", _depthwise_multiply_sum, x, attention, layer)
                    add("dw: aggregate kernel, k² shifted slices", _depthwise_shifted_slices, x, attention, layer)
                else:
                    add("1x1: static conv to K·C_out, weight, sum", _pointwise_stacked, x, attention, layer.kernel)
        print(f"batch {batch}:")
        for label, ms in sorted(totals.items()):
            print(f"  {label:<45} {ms:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model and batch (>= 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--formulations", action="store_true", help="also time DynamicConv alternatives")
    args = parser.parse_args()
    bench_models(args.batches, max(args.runs, 20), args.warmup)
    if args.formulations:
        bench_formulations(args.batches, args.runs, args.warmup)


if __name__ == "__main__":
    main()
