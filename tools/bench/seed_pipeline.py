"""The "seed pipeline": a TF log-mel front-end written the common way, then onnxruntime.

This is what the project started from (a TF front-end in front of the upstream-exported ONNX), kept
here as the baseline the issue's targets compare against. It is deliberately *not* eat-keras' exact
front-end: uncentred ``tf.signal.stft`` with a periodic Hann window, TF's HTK mel matrix, no
pre-emphasis, so it gives ``1 + (N - 800) // 320`` frames instead of upstream's ``1 + (N - 1) // 320``.
"""

from __future__ import annotations

from typing import Any

SAMPLE_RATE = 32000
FRAME_LENGTH = 800
FRAME_STEP = 320
FFT_LENGTH = 1024
N_MELS = 128
FMIN, FMAX = 0.0, 15000.0
LOG_OFFSET = 1e-5
NORM_SHIFT, NORM_SCALE = 4.5, 5.0


def seed_frames(num_samples: int) -> int:
    """Frames of the uncentred STFT (no padding)."""
    return 1 + (num_samples - FRAME_LENGTH) // FRAME_STEP


def seed_log_mel_function(batch: int, num_samples: int) -> Any:
    """A traced ``tf.function`` ``[batch, num_samples]`` waveform → ``[batch, 1, 128, T]`` log-mel."""
    import tensorflow as tf

    mel_matrix = tf.signal.linear_to_mel_weight_matrix(N_MELS, FFT_LENGTH // 2 + 1, SAMPLE_RATE, FMIN, FMAX)

    @tf.function(input_signature=[tf.TensorSpec([batch, num_samples], tf.float32)])
    def log_mel(waveform: tf.Tensor) -> tf.Tensor:
        stft = tf.signal.stft(
            waveform,
            frame_length=FRAME_LENGTH,
            frame_step=FRAME_STEP,
            fft_length=FFT_LENGTH,
            window_fn=tf.signal.hann_window,
        )
        power = tf.math.square(tf.math.abs(stft))  # [B, T, 513]
        mel = tf.tensordot(power, mel_matrix, 1)  # [B, T, 128]
        normalised = (tf.math.log(mel + LOG_OFFSET) + NORM_SHIFT) / NORM_SCALE
        return tf.transpose(normalised, [0, 2, 1])[:, tf.newaxis]  # [B, 1, 128, T] as the ONNX takes

    log_mel.get_concrete_function()  # trace now, not inside the first timed call
    return log_mel


def ort_session(onnx_path: str, num_threads: int) -> Any:
    """onnxruntime CPU session as deployed: intra-op ``num_threads``, inter-op 1, all graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # errors only: the MN export's batch-8 output shape [1, 8, 527] (upstream's squeeze/unsqueeze
    # traced at batch 1) makes onnxruntime warn on every call; the values are right
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
