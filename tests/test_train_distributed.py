"""Fine-tuning under ``tf.distribute``: ``MirroredStrategy`` over two logical CPU devices, and two
local CPU workers under ``MultiWorkerMirroredStrategy`` (``eat-keras finetune --strategy
multi_worker`` with ``TF_CONFIG`` on free localhost ports) that each read their own shards and end
with the same weights, log and best model.

Every run is a child process: a strategy's devices and collectives are fixed once per process, before
TensorFlow runs anything. The child wraps ``fit.prepared_dataset`` to record, for each training
pipeline it makes, the worker's shard and per-replica batch size and every batch's file indices as
training consumes them. A hard timeout kills every child, so that a worker whose partner never comes
fails the test instead of hanging it; a worker that fails ends its partner at once.

The data and the model are :mod:`tiny_training`'s: two classes, a randomly initialised MN width 0.1.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tiny_training import (  # noqa: F401
    best_values,
    checkpoint_values,
    save_tiny_teacher,
    tiny_finetune_config,
    tiny_model,
    write_class_folders,
)

from eat_keras.train.data import read_folder_dataset
from eat_keras.train.prepare import PrepareSettings, PreparedData, prepare

BATCH = 4  # global: two replicas or two workers take two clips each
EPOCHS = 2
# Only a hang reaches it (a worker waiting for a partner that never comes: a worker that fails ends
# its partner at once). A run takes about 40 s of CPU per child; the margin is for a shared machine.
TIMEOUT_S = 480.0

# The child: record what each training pipeline reads, then train. ``reads`` is written even when the
# run fails, so that a failure message can say how far it got.
_CHILD = r"""
import json, sys

spec = json.loads(open(sys.argv[1]).read())
import tensorflow as tf

if spec["strategy"] == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import eat_keras.train.fit as fit
from eat_keras.train.shards import prepared_dataset

reads = []


def recording_prepared_dataset(*args, **kwargs):
    dataset = prepared_dataset(*args, **kwargs)
    if kwargs.get("mode") != "train":
        return dataset
    read = {key: kwargs[key] for key in ("epoch", "shard_index", "num_shards", "batch_size")}
    read["batches"] = []
    reads.append(read)

    def note(index):
        read["batches"].append(index.numpy().tolist())
        return index

    return dataset.map(lambda b: {**b, "index": tf.py_function(note, [b["index"]], tf.int32)})


fit.prepared_dataset = recording_prepared_dataset
code = 1
try:
    if spec["strategy"] == "mirrored":
        from eat_keras.train.config import FinetuneConfig

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        fit.finetune(spec["data"], spec["out"], FinetuneConfig(**spec["config"]), strategy, verbose=False)
        code = 0
    else:
        from eat_keras.cli import main

        code = main(spec["argv"])
finally:
    with open(spec["reads"], "w") as f:
        json.dump(reads, f)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> PreparedData:
    """Eight files per class prepared into four training shards: twelve train, four validate."""
    root = tmp_path_factory.mktemp("distributed")
    examples = read_folder_dataset(write_class_folders(root / "data", per_class=8))
    settings = PrepareSettings(val_fraction=0.25, min_shards=4)
    return prepare(examples, root / "prepared", settings, processes=1, log=lambda message: None)


def _free_ports(count: int) -> list[int]:
    """Ports the system has just handed out, held together so that they differ."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]


def _child_env(tf_config: dict | None = None) -> dict[str, str]:
    """CPU only (the runs compared are CPU runs, under op determinism), TensorFlow's logging off."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


@contextlib.contextmanager
def _children(folder: Path, specs: list[dict], envs: list[dict[str, str]]) -> Iterator[list[subprocess.Popen]]:
    """Start one child per spec, each in its own process group (killed with everything it started)."""
    script = folder / "child.py"
    script.write_text(_CHILD)
    procs = []
    try:
        for i, (spec, env) in enumerate(zip(specs, envs)):
            (folder / f"spec{i}.json").write_text(json.dumps(spec))
            log = (folder / f"child{i}.log").open("w")
            procs.append(subprocess.Popen(
                [sys.executable, str(script), str(folder / f"spec{i}.json")], env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            ))  # fmt: skip
            log.close()
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait(procs: list[subprocess.Popen], end_all_at_first_failure: bool = True) -> list[int]:
    """The children's exit codes; every child still running at the timeout is killed (-9), and
    with ``end_all_at_first_failure`` so is every other child once one fails (they would wait for
    it forever)."""
    started = time.monotonic()
    while any(p.poll() is None for p in procs):
        failed = end_all_at_first_failure and any(p.returncode not in (None, 0) for p in procs)
        if failed or time.monotonic() - started > TIMEOUT_S:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            break
        time.sleep(0.2)
    return [p.returncode for p in procs]


def _wait_all(procs: list[subprocess.Popen], folder: Path) -> str:
    """Wait for every child to exit 0 within the timeout. Returns the wall-clock and CPU time the
    children took."""
    started, cpu_before = time.monotonic(), _children_cpu_seconds()
    codes = _wait(procs)
    if codes != [0] * len(procs):
        tails = "\n".join(f"--- child {i} (exit {c}):\n" + _tail(folder / f"child{i}.log") for i, c in enumerate(codes))
        took = time.monotonic() - started
        pytest.fail(f"children exited {codes} after {took:.0f} s (timeout {TIMEOUT_S:.0f} s)\n{tails}")
    return f"{time.monotonic() - started:.1f} s, {_children_cpu_seconds() - cpu_before:.1f} CPU s"


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _log_rows(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open() as f:
        return list(csv.DictReader(f))


def _assert_identical(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _assert_trained(out: Path) -> list[dict[str, str]]:
    """Every epoch logged with finite losses and validation metrics, and a best model saved."""
    rows = _log_rows(out)
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    for row in rows:
        logged = {k: float(v) for k, v in row.items() if k.startswith(("train_", "val_"))}
        assert {"train_loss", "val_loss", "val_accuracy", "val_macro_f1"} <= set(logged), row
        assert all(math.isfinite(v) for v in logged.values()), row
    values = best_values(out)
    assert values and all(np.isfinite(v).all() for v in values.values() if v.dtype.kind == "f")
    return rows


def _train_positions(prepared: PreparedData, shard_index: int, num_shards: int) -> set[int]:
    """Positions (``index``) among the training files of the files in a worker's shards."""
    names = {p.name for p in prepared.shard_paths("train")[shard_index::num_shards]}
    return {i for i, e in enumerate(prepared.entries("train")) if e["shard"] in names}


@pytest.mark.slow
def test_mirrored_strategy_splits_each_batch_across_two_devices(prepared, tiny_model, tmp_path):
    out = tmp_path / "run"
    config = tiny_finetune_config(tiny_model, batch_size=BATCH, epochs=EPOCHS).to_dict()
    spec = {"strategy": "mirrored", "data": str(prepared.folder), "out": str(out), "config": config,
            "reads": str(tmp_path / "reads.json")}  # fmt: skip
    with _children(tmp_path, [spec], [_child_env()]) as procs:
        took = _wait_all(procs, tmp_path)
    print(f"mirrored run: {took}")
    _assert_trained(out)
    reads = json.loads((tmp_path / "reads.json").read_text())
    # one input pipeline feeding both replicas two clips each; every step takes a full global
    # batch, so each epoch trains on every training file exactly once (12 files, 3 steps)
    train_files = len(prepared.entries("train"))
    assert [r["epoch"] for r in reads] == list(range(EPOCHS))
    for read in reads:
        assert (read["shard_index"], read["num_shards"], read["batch_size"]) == (0, 1, BATCH // 2)
        assert [len(b) for b in read["batches"]] == [BATCH // 2] * (train_files // BATCH * 2)
        assert sorted(i for b in read["batches"] for i in b) == list(range(train_files))


def _finetune_argv(prepared: PreparedData, tiny_model: Path, out: Path, epochs: int = EPOCHS) -> list[str]:
    return [
        "finetune", str(prepared.folder), "--out", str(out), "--strategy", "multi_worker", "--model", str(tiny_model),
        "--clip-seconds", "1", "--batch-size", str(BATCH), "--epochs", str(epochs), "--lr", "1e-3",
        "--warmup-fraction", "0", "--last-lr-factor", "1",
    ]  # fmt: skip


def _two_workers(argv: list[str], folder: Path) -> tuple[list[dict], list[dict[str, str]]]:
    """The children's specs and environments: two workers on free localhost ports, one command."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    specs = [{"strategy": "multi_worker", "argv": argv, "reads": str(folder / f"reads{i}.json")} for i in range(2)]
    envs = [_child_env({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(2)]
    return specs, envs


@pytest.mark.slow
@pytest.mark.parametrize("teacher", [False, True], ids=["plain", "online_teacher"])
def test_two_workers_read_their_own_shards_and_end_with_identical_weights(prepared, tiny_model, teacher, tmp_path):
    out = tmp_path / "run"
    argv = _finetune_argv(prepared, tiny_model, out)
    if teacher:  # each worker runs the teacher on its own clips (the default loss then has a kd term)
        argv += ["--teacher", str(save_tiny_teacher(tmp_path / "teacher"))]
    with _children(tmp_path, *_two_workers(argv, tmp_path)) as procs:
        took = _wait_all(procs, tmp_path)
    print(f"two workers: {took}")

    other = out / "workers" / "worker-1"  # the chief (worker 0) writes the run, worker 1 its copy
    rows = _assert_trained(out)
    assert (other / "log.csv").read_text() == (out / "log.csv").read_text() and len(rows) == EPOCHS
    assert ("train_kd" in rows[0]) == teacher
    _assert_identical(best_values(other), best_values(out))
    last = f"checkpoints/ckpt-{EPOCHS}"  # weights, BatchNorm statistics, optimizer slots, RNG, counters
    _assert_identical(checkpoint_values(other / last), checkpoint_values(out / last))
    chief_manifest, other_manifest = (json.loads((o / "best" / "eat_keras.json").read_text()) for o in (out, other))
    del chief_manifest["weights"], other_manifest["weights"]  # a file name unique to each save
    assert other_manifest == chief_manifest

    reads = [json.loads((tmp_path / f"reads{i}.json").read_text()) for i in range(2)]
    _assert_each_worker_read_its_own_shards(prepared, reads)


def _assert_each_worker_read_its_own_shards(prepared: PreparedData, reads: list[list[dict]]) -> None:
    """Worker ``i`` read shards ``i, i+2, ...`` only, two clips a step, as many steps as the other."""
    own = [_train_positions(prepared, i, 2) for i in range(2)]
    assert not own[0] & own[1] and own[0] | own[1] == set(range(len(prepared.entries("train"))))
    steps = min(len(files) for files in own) // (BATCH // 2)
    assert steps >= 1
    for worker, worker_reads in enumerate(reads):
        assert [r["epoch"] for r in worker_reads] == list(range(EPOCHS))
        for read in worker_reads:
            assert (read["shard_index"], read["num_shards"], read["batch_size"]) == (worker, 2, BATCH // 2)
            assert [len(b) for b in read["batches"]] == [BATCH // 2] * steps
            seen = [i for b in read["batches"] for i in b]
            assert set(seen) <= own[worker] and len(set(seen)) == len(seen), (worker, seen, sorted(own[worker]))


@pytest.mark.slow
def test_workers_that_would_resume_from_different_epochs_all_refuse(prepared, tiny_model, tmp_path):
    """Each worker resumes from its own copy of the run. With worker 1's copy lost, a longer run
    would go on from epoch 1 on the chief and start afresh on worker 1, two models under one
    strategy: both refuse, in one line naming the epochs, before training."""
    out = tmp_path / "run"
    with _children(tmp_path, *_two_workers(_finetune_argv(prepared, tiny_model, out, epochs=1), tmp_path)) as procs:
        _wait_all(procs, tmp_path)
    log = (out / "log.csv").read_text()
    shutil.rmtree(out / "workers" / "worker-1")

    again = tmp_path / "again"
    again.mkdir()
    with _children(again, *_two_workers(_finetune_argv(prepared, tiny_model, out, epochs=2), again)) as procs:
        codes = _wait(procs, end_all_at_first_failure=False)
    assert -signal.SIGKILL not in codes and all(code != 0 for code in codes), codes
    for i in range(2):
        assert "the workers resume from different epochs (0, 1 done)" in (again / f"child{i}.log").read_text()
    assert (out / "log.csv").read_text() == log  # nothing trained
