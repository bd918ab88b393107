"""Training step of eat-keras against the PyTorch reference's, for mn04 and dymn04 (run by hand).

One step: a batch of 32 two-second waveforms, random gain and circular roll, the training front-end
(log-mel with fmin/fmax jitter), mixup, the network in training mode, 0.8 · class-balanced + 0.2 ·
SupCon loss, gradients and one Adam update. eat-keras runs the step fine-tuning runs
(``eat_keras.train.fit``); the reference runs the upstream network of
``tests/upstream_reference/torch_reference.py`` behind an upstream-style ``AugmentMelSTFT`` front-end,
with the same augmentations and loss written in PyTorch, ``torch.optim.Adam`` and
``torch.set_num_threads(--threads)``. Both steps see the same batch::

    EAT_WEIGHTS_DIR=/work/shared/weights python tools/bench_train_step.py --out /tmp/bench_train_step

The two steps of a model alternate round by round in one process (see :mod:`tools.bench.timing`: each
timed step comes after an untimed one of its own, so that neither pays for the other's spinning
idle threads); the medians give the ratio ``reference ms / eat-keras ms`` (eat-keras' throughput
relative to the reference's; the target is >= 1.3). mn04 starts from the release weights when
``$EAT_WEIGHTS_DIR`` holds them, dymn04 from random weights: a step's time does not depend on them.
Writes ``results.json`` (every raw time) and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from eat_keras.frontend_config import FrontendConfig  # noqa: E402
from eat_keras.loading import load_tagger  # noqa: E402
from eat_keras.models import build_tagger  # noqa: E402
from eat_keras.presets import get_preset  # noqa: E402
from eat_keras.train import fit  # noqa: E402
from eat_keras.train.config import FinetuneConfig  # noqa: E402
from eat_keras.train.losses import CombinedLoss, class_balanced_weights  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make tools.bench importable
    sys.path.insert(0, str(REPO_ROOT))

from tools.bench import machine, report, timing  # noqa: E402
from tools.bench.paths import DEFAULT_O2T_VENV  # noqa: E402  (puts tests/ on sys.path)
from upstream_reference.torch_reference import build_reference, load_upstream_state_dict  # noqa: E402

MODELS = {"mn04": "mn04_as", "dymn04": "dymn04_as"}
#: per-class training counts (the imbalanced ESC-10 of tools/bench_finetune.py): the CB weights
CLASS_COUNTS = (32, 32, 24, 24, 16, 16, 8, 8, 4, 4)
LOSS_TERMS = {"cb": 0.8, "supcon": 0.2}
TARGET_RATIO = 1.3
ROUTES = ("eat-keras", "torch")


# --- the batch --------------------------------------------------------------------------------------


def make_batch(batch: int, samples: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noise waveforms ``[B, N]`` with a level per clip and labels ``[B]`` covering every class."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.01, 0.3, (batch, 1))
    waveform = (rng.standard_normal((batch, samples)) * level).astype(np.float32)
    return waveform, (np.arange(batch) % classes).astype(np.int64)


def finetune_config(preset: str, batch: int, seconds: float) -> FinetuneConfig:
    return FinetuneConfig(model=preset, clip_seconds=seconds, batch_size=batch, loss_terms=dict(LOSS_TERMS))


def weight_file(preset: str) -> Path | None:
    """The preset's release weights in ``$EAT_WEIGHTS_DIR``, if there (nothing is downloaded)."""
    folder = os.environ.get("EAT_WEIGHTS_DIR")
    path = Path(folder) / get_preset(preset).filename if folder else None
    return path if path is not None and path.is_file() else None


# --- eat-keras ---------------------------------------------------------------------------------------


def keras_step(preset: str, config: FinetuneConfig, waveform: np.ndarray, labels: np.ndarray) -> Callable[[], float]:
    """fine-tuning's own training step on a fresh 10-class model; calling it runs one step."""
    classes = len(CLASS_COUNTS)
    if weight_file(preset) is not None:
        base = load_tagger(preset, with_class_names=False)
    else:
        base = build_tagger(get_preset(preset).config)
    strategy = tf.distribute.get_strategy()
    names = [f"class{i}" for i in range(classes)]
    state = fit._training_state(base, names, config, strategy)
    loss = CombinedLoss(
        terms=config.loss_terms, form=config.loss_form, settings=config.loss_settings,
        class_counts=np.asarray(CLASS_COUNTS),
    )  # fmt: skip
    train_step = fit._train_step_function(state, loss, config, strategy)
    batch = {"waveform": tf.constant(waveform), "target": tf.one_hot(labels, classes)}
    return lambda: float(train_step(batch, True)["loss"])


# --- PyTorch: upstream-style front-end, augmentations and loss ------------------------------------------


def _kaldi_mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(freq, torch.Tensor):
        return 1127.0 * torch.log1p(freq / 700.0)
    return 1127.0 * float(np.log1p(freq / 700.0))


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> torch.Tensor:
    """``torchaudio.compliance.kaldi.get_mel_banks`` (no VTLN), padded with a zero Nyquist column as
    upstream does: ``[n_mels, n_fft // 2 + 1]``."""
    mel_low, mel_high = _kaldi_mel(fmin), _kaldi_mel(fmax)
    delta = (mel_high - mel_low) / (n_mels + 1)
    band = torch.arange(n_mels, dtype=torch.float32).unsqueeze(1)
    left, centre, right = mel_low + band * delta, mel_low + (band + 1.0) * delta, mel_low + (band + 2.0) * delta
    mel = _kaldi_mel(sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float32)).unsqueeze(0)
    banks = torch.clamp(torch.minimum((mel - left) / (centre - left), (right - mel) / (right - centre)), min=0.0)
    return F.pad(banks, (0, 1))


class AugmentMelSTFT(nn.Module):
    """Upstream ``models/preprocess.py::AugmentMelSTFT`` in training mode (torchaudio's mel banks
    ported above; no masking, as eat-keras' default ``freqm = timem = 0``)."""

    def __init__(self, config: FrontendConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_length, periodic=False), persistent=False)
        self.register_buffer("preemphasis", torch.tensor([[[-0.97, 1.0]]]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = F.conv1d(x.unsqueeze(1), self.preemphasis).squeeze(1)
        spec = torch.stft(x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, center=True,
                          normalized=False, window=self.window, return_complex=True)  # fmt: skip
        power = torch.view_as_real(spec).pow(2).sum(-1)
        fmin = c.fmin + int(torch.randint(max(c.fmin_aug_range, 1), (1,)))
        fmax = c.effective_fmax + c.fmax_aug_range // 2 - int(torch.randint(max(c.fmax_aug_range, 1), (1,)))
        banks = kaldi_mel_banks(c.n_mels, c.n_fft, c.sample_rate, fmin, fmax)
        mel = torch.matmul(banks, power)
        return ((mel + 1e-5).log() + 4.5) / 5.0


def torch_waveform_augment(x: torch.Tensor, gain_db: int, roll: int) -> torch.Tensor:
    """Per-clip integer gain in ``[-gain_db, gain_db)`` dB and circular roll in ``[-roll, roll]``."""
    batch, samples = x.shape
    if gain_db:
        db = torch.randint(-gain_db, gain_db, (batch, 1)).float()
        x = x * torch.pow(10.0, db / 20.0)
    if roll:
        shift = torch.randint(-roll, roll + 1, (batch, 1))
        x = torch.gather(x, 1, torch.remainder(torch.arange(samples).unsqueeze(0) - shift, samples))
    return x


def torch_mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's ``mixup``: ``λ ~ Beta(α, α)`` per clip, ``max(λ, 1 − λ)``, a random partner."""
    lam_np = np.random.beta(alpha, alpha, x.shape[0])
    lam = torch.as_tensor(np.maximum(lam_np, 1.0 - lam_np), dtype=torch.float32)
    perm = torch.randperm(x.shape[0])

    def mix(v: torch.Tensor) -> torch.Tensor:
        weight = lam.view(-1, *[1] * (v.dim() - 1))
        return v * weight + v[perm] * (1.0 - weight)

    return mix(x), mix(targets)


def torch_supcon(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """``eat_keras.train.losses.supervised_contrastive_loss`` in PyTorch."""
    f = F.normalize(embeddings, dim=-1)
    similarity = f @ f.T / temperature
    self_mask = torch.eye(f.shape[0], dtype=torch.bool)
    others = similarity.masked_fill(self_mask, -1e9)
    log_eps = torch.full((f.shape[0],), float(np.log(1e-12)))
    log_denominator = torch.logaddexp(torch.logsumexp(others, dim=1), log_eps)
    log_prob = similarity - log_denominator[:, None]
    positives = ((labels[:, None] == labels[None, :]) & ~self_mask).float()
    per_anchor = (positives * log_prob).sum(1) / (positives.sum(1) + 1e-12)
    return -per_anchor.mean()


def torch_loss(logits: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
               temperature: float) -> torch.Tensor:  # fmt: skip
    """0.8 · softmax class-balanced loss (γ = 0) + 0.2 · SupCon on the dominant labels."""
    cb = (-targets * weights * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    supcon = torch_supcon(embeddings, targets.argmax(-1), temperature)
    return LOSS_TERMS["cb"] * cb + LOSS_TERMS["supcon"] * supcon


def torch_model(preset: str, classes: int) -> nn.Module:
    """The reference network in training mode, with the release weights (but the head's last
    layer) where ``$EAT_WEIGHTS_DIR`` holds them."""
    config = get_preset(preset).config.replace(num_classes=classes)
    model = build_reference(config)
    path = weight_file(preset)
    if path is not None:
        own = model.state_dict()
        state = {k: v for k, v in load_upstream_state_dict(path).items() if own[k].shape == v.shape}
        model.load_state_dict(state, strict=False)
    return model.train()


def torch_step(preset: str, config: FinetuneConfig, waveform: np.ndarray, labels: np.ndarray) -> Callable[[], float]:
    classes = len(CLASS_COUNTS)
    model = torch_model(preset, classes)
    frontend = AugmentMelSTFT(get_preset(preset).config.frontend)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    weights = torch.as_tensor(class_balanced_weights(CLASS_COUNTS, config.loss_settings["cb_beta"]))
    temperature = config.loss_settings["supcon_temperature"]
    x0, y0 = torch.as_tensor(waveform), F.one_hot(torch.as_tensor(labels), classes).float()

    def step() -> float:
        x = torch_waveform_augment(x0, config.gain_db, config.roll_samples)
        mel = frontend(x).unsqueeze(1)  # [B, 1, n_mels, T]
        mel, targets = torch_mixup(mel, y0, config.mixup_alpha) if config.mixup_alpha > 0 else (mel, y0)
        logits, embeddings = model(mel)
        loss = torch_loss(logits, embeddings, targets, weights, temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


# --- the run ------------------------------------------------------------------------------------------


def bench_model(name: str, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    preset = MODELS[name]
    config = finetune_config(preset, args.batch, args.seconds)
    samples = int(round(args.seconds * get_preset(preset).config.frontend.sample_rate))
    waveform, labels = make_batch(args.batch, samples, len(CLASS_COUNTS))
    started = time.perf_counter()
    steps = {(route, name): build(preset, config, waveform, labels)
             for route, build in zip(ROUTES, (keras_step, torch_step))}  # fmt: skip
    losses = {route: step() for (route, _), step in steps.items()}  # the first step traces the graph
    built_s = time.perf_counter() - started
    say(f"{name}: built and traced in {built_s:.0f} s; first losses {losses}")
    progress = lambda message: say(f"{name}: {message}")  # noqa: E731
    times = timing.round_robin(steps, args.runs, args.warmup, progress=progress, lead_in_s=0.0)
    stats = {route: timing.summarize(times[(route, name)], args.batch) for route in ROUTES}
    ratio = stats["torch"]["median_ms"] / stats["eat-keras"]["median_ms"]
    # the fastest tenth: what each side does when the other jobs of a shared machine leave it alone
    ratio_p10 = stats["torch"]["p10_ms"] / stats["eat-keras"]["p10_ms"]
    say(f"{name}: eat-keras {stats['eat-keras']['median_ms']:.0f} ms, torch {stats['torch']['median_ms']:.0f} ms "
        f"per step: {ratio:.2f}x")  # fmt: skip
    return {
        "preset": preset, "weights": str(weight_file(preset) or "random"), "first_losses": losses,
        "build_and_trace_s": built_s, "load_average_after": list(os.getloadavg()),
        "stats": stats, "ratio": ratio, "ratio_p10": ratio_p10, "passed": ratio >= TARGET_RATIO,
        "times_s": {route: times[(route, name)] for route in ROUTES},
    }  # fmt: skip


def settings(args: argparse.Namespace) -> dict[str, Any]:
    config = finetune_config("mn04_as", args.batch, args.seconds)
    return {
        "batch": args.batch, "seconds": args.seconds, "warmup": args.warmup, "runs": args.runs,
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn_enabled": machine.tensorflow_onednn_enabled(), "classes": len(CLASS_COUNTS),
        "loss_terms": LOSS_TERMS, "gain_db": config.gain_db, "roll_samples": config.roll_samples,
        "mixup_alpha": config.mixup_alpha, "learning_rate": config.learning_rate,
    }  # fmt: skip


def _loads(loads: list[float] | None) -> str:
    return ", ".join(f"{x:.2f}" for x in loads or [])


def render(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    after = "; ".join(f"{name} {_loads(r['load_average_after'])}" for name, r in results["models"].items())
    rows = []
    for name, r in results["models"].items():
        k, t = r["stats"]["eat-keras"], r["stats"]["torch"]
        rows.append([name, f"{k['median_ms']:.0f} ({k['p10_ms']:.0f}–{k['p90_ms']:.0f})",
                     f"{t['median_ms']:.0f} ({t['p10_ms']:.0f}–{t['p90_ms']:.0f})",
                     f"{r['ratio']:.2f}× ({r['ratio_p10']:.2f}×)", f"≥ {TARGET_RATIO}×",
                     "**pass**" if r["passed"] else "**FAIL**", r["weights"]])  # fmt: skip
    lines = [
        "# Training step: eat-keras vs the PyTorch reference", "", "```", m["command"], "```", "",
        f"- date {m['date']}; commit {m['git_commit']}",
        f"- machine: {m['cpu']} ({' '.join(m['cpu_features'])}), {m['logical_cores']} logical cores "
        f"({m['usable_cores']} usable); load average (1, 5, 15 min) at start {_loads(m['load_average_at_start'])}, "
        f"after each model {after}",
        f"- versions: tensorflow {m['versions']['tensorflow']}, torch {m['versions']['torch']}; TF oneDNN "
        f"{'on' if s['onednn_enabled'] else 'off'}; torch threads {s['torch_threads']}",
        f"- step: batch {s['batch']} × {s['seconds']:g} s waveforms, gain ±{s['gain_db']} dB, "
        f"roll ±{s['roll_samples']}, training log-mel, mixup α {s['mixup_alpha']}, {s['classes']} classes, "
        f"loss {s['loss_terms']}, Adam",
        f"- timing: {s['warmup']} warm-up rounds, then {s['runs']} rounds; in each round each side makes one "
        "untimed and one timed step, the sides alternating; ms per step, median (p10–p90). The ratio is "
        "torch ms / eat-keras ms of the medians (the target's), in brackets of the p10s. On a machine shared "
        "with other jobs PyTorch's OpenMP threads wait for a descheduled partner: its steps then take "
        "several times longer, and the median favours eat-keras; compare the load averages",
        "",
    ]  # fmt: skip
    header = ["model", "eat-keras ms", "torch ms", "throughput ratio (of the p10s)", "target", "result", "weights"]
    return "\n".join(lines + report._table(header, rows, "lrrrrll"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_train_step"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=15, help="timed steps per side and model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds before the timed ones")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    say = lambda message: print(message, flush=True)  # noqa: E731
    argv = sys.argv[1:] if argv is None else argv
    results: dict[str, Any] = {"machine": machine.describe(DEFAULT_O2T_VENV, argv)}
    results["machine"]["command"] = "python tools/bench_train_step.py " + " ".join(argv)
    results["settings"] = settings(args)
    results["models"] = {name: bench_model(name, args, say) for name in args.models}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(render(results))
    print(render(results))
    return 0 if all(r["passed"] for r in results["models"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
