"""Checks of the stage profiler's (``tools/bench/profile.py``) counting and cuts; nothing is timed."""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

from shared_data import REPO_ROOT
from eat_keras.frontend import FrontendConfig
from eat_keras.frontend_dft import factored_log_mel, frame_pieces, make_plan
from eat_keras.models.network import EfficientATNet
from eat_keras.presets import get_preset
from tolerances import NETWORK_RTOL, assert_close

if str(REPO_ROOT) not in sys.path:  # the tools run as `python -m tools.bench` from the repo root
    sys.path.append(str(REPO_ROOT))

from tools.bench import profile  # noqa: E402


def test_count_macs_of_conv_depthwise_dense_and_batch_matmul() -> None:
    conv = np.ones((3, 3, 2, 4), np.float32)
    depthwise = np.ones((3, 3, 4, 1), np.float32)
    dense = np.ones((4, 3), np.float32)

    def model(x: tf.Tensor) -> list[tf.Tensor]:
        y = tf.nn.conv2d(x, conv, 1, "SAME")  # [1, 8, 8, 4]: 256 outputs x 3*3*2
        y = tf.nn.depthwise_conv2d(y, depthwise, [1, 1, 1, 1], "SAME")  # 256 outputs x 3*3
        rows = tf.reshape(y, [64, 4])
        fc = rows @ dense  # 192 outputs x 4
        gram = tf.matmul(rows[None], rows[None], transpose_b=True)  # dynamic operands: 4096 outputs x 4
        return [fc, gram]

    macs = profile.count_macs(profile._convert(model, (1, 8, 8, 2)))
    assert macs == 256 * 18 + 256 * 9 + 192 * 4 + 4096 * 4


def test_frontend_cuts_end_where_the_front_end_ends() -> None:
    config = FrontendConfig()
    num_samples = 32000 * 3  # 301 frames: one piece
    wave = tf.constant(np.random.default_rng(0).standard_normal((1, num_samples)) * 0.1, tf.float32)
    cuts = profile.frontend_cuts(config, num_samples)
    assert [name.split(":")[0] for name, _ in cuts][1:3] == ["stage 1", "stage 2"]
    pieces = frame_pieces(config.num_frames(num_samples))
    plan = make_plan(config)
    stage2 = dict(cuts)["stage 2: matmul"](wave)
    assert [tuple(t.shape) for t in stage2] == [((b - a) * plan.half_bins, 2 * plan.radix) for a, b in pieces]
    mel = dict(cuts)["mel projection (banded matmuls)"](wave)
    assert [tuple(t.shape) for t in mel] == [(b - a, config.n_mels) for a, b in pieces]
    np.testing.assert_array_equal(cuts[-1][1](wave).numpy(), factored_log_mel(wave, config).numpy())


def test_network_cuts_cover_every_block_and_end_at_the_logits() -> None:
    net = EfficientATNet(get_preset("mn04_as").config).build_for_inference()
    cuts = profile.network_cuts(net)
    assert len(cuts) == len(net.blocks) + 3
    mel = tf.random.normal([1, 128, 64, 1], seed=1)
    # a traced cut vs the eager network: grappler and oneDNN may fuse them differently
    assert_close(cuts[-1][1](mel).numpy(), net(mel, training=False)["logits"].numpy(), NETWORK_RTOL)
    assert cuts[0][1](mel).shape == (1, 64, 32, net.blocks[0].spec.in_channels)


def test_markdown_leaves_missing_values_blank() -> None:
    row = {"stage": "peak", "cumulative_ms": None, "stage_ms": 2.0, "stage_mmac": 100.0, "gmac_per_s": 50.0}
    assert "| peak |  | 2.000 | 100.0 | 50.0 |" in profile.markdown("t", [row])
