"""MultiWorkerMirroredStrategy for real: two CLI processes on loopback, as on two machines.

Each worker is `python -m simclr_tf.run --strategy=multi_worker` with its own `TF_CONFIG`. The
test checks that both finish, that only the chief (worker 0) leaves files in model_dir (its
checkpoints, logs and export; nothing of worker 1's scratch saves), that both workers end with
bit-identical weights, that the chief's last checkpoint holds its final encoder, and that both
resume from the chief's checkpoint on a rerun.

The workers' weights are compared through `weights_sha256`, which each prints (`Weights SHA-256:`).
"""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600  # seconds per run of both workers; the machine is small and shared
TINY = ("--strategy=multi_worker", "--checkpoint_steps=2", "--linear_eval_epochs=0",
        "--train_batch_size=32", "--deterministic")
SHA = re.compile(r"^Weights SHA-256:\s+([0-9a-f]{64})$", re.MULTILINE)
EVENT_FILE = re.compile(r"events\.out\.tfevents\.\d+\..+\.(\d+)\.\d+\.v2$")  # time.host.pid.n.v2


def _free_ports(count):
    """Ports the kernel hands out now (all sockets held open together, so they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_workers(log_dir, model_dir, *flags):
    """Runs the CLI as worker 0 and worker 1 of one cluster; returns [(pid, stdout)] once both succeed."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    smoke = os.path.join(ROOT, "experiments", "smoke.flags")
    command = [sys.executable, "-m", "simclr_tf.run", f"--flagfile={smoke}", f"--model_dir={model_dir}",
               *TINY, *flags]
    os.makedirs(log_dir, exist_ok=True)
    outputs = [os.path.join(log_dir, f"worker{i}.{kind}") for i in range(2) for kind in ("out", "err")]
    processes = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        # Files, not pipes: a full pipe would block a worker in the middle of a collective.
        with open(outputs[2 * index], "w") as out, open(outputs[2 * index + 1], "w") as err:
            processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err))
    try:
        for process in processes:
            process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
            process.wait()
        pytest.fail(f"The workers did not finish in {TIMEOUT} s:\n{_tails(outputs)}")
    codes = [process.returncode for process in processes]
    assert codes == [0, 0], f"exit codes {codes}:\n{_tails(outputs)}"
    return [(process.pid, open(outputs[2 * index]).read()) for index, process in enumerate(processes)]


def _tails(outputs):
    return "\n".join(f"--- {os.path.basename(path)} ---\n{open(path).read()[-3000:]}" for path in outputs)


def _fingerprint(stdout):
    found = SHA.findall(stdout)
    assert len(found) == 1, stdout[-2000:]
    return found[0]


def _all_paths(model_dir):
    return sorted(os.path.relpath(os.path.join(root, name), model_dir)
                  for root, dirs, files in os.walk(model_dir) for name in dirs + files)


def _checkpoint_encoder(model_dir, prefix):
    """The encoder weights in a checkpoint, restored (as eval and export do) into a fresh model."""
    import tensorflow as tf

    from simclr_tf import checkpoints
    from simclr_tf.config import load_config
    from simclr_tf.models.build import build_model

    config = load_config(model_dir).resolved()
    num_classes = checkpoints.checkpoint_num_classes(prefix)
    assert num_classes == 10  # digits; the online linear head is in the checkpoint
    model = build_model(config, num_classes)
    model(tf.zeros([1, config.image_size, config.image_size, 3]), training=False)
    tf.train.Checkpoint(model=model).restore(prefix).expect_partial().assert_existing_objects_matched()
    return [w.numpy() for w in model.encoder.weights]


def _exported_encoder(export):
    import keras

    import simclr_tf.models.layers  # noqa: F401  (the classes encoder.keras names)

    return [w.numpy() for w in keras.saving.load_model(os.path.join(export, "encoder.keras")).weights]


def _same(weights_a, weights_b):
    return len(weights_a) == len(weights_b) and all(
        a.shape == b.shape and np.array_equal(a, b) for a, b in zip(weights_a, weights_b, strict=True))


def _assert_only_the_chiefs_wrote(model_dir, chief_pids, worker_pid):
    paths = _all_paths(model_dir)
    leftovers = [p for p in paths if any(part.startswith(".") for part in p.split(os.sep))
                 and p != ".run.lock"]  # the chief's lock file stays (flock), empty
    assert not leftovers, f"scratch or temporary files left behind: {leftovers}"
    events = [p for p in paths if "tfevents" in p]
    assert events
    writers = {int(EVENT_FILE.search(p).group(1)) for p in events}
    assert writers == set(chief_pids), f"events by {writers}; chiefs {chief_pids}, worker {worker_pid}"


@pytest.mark.slow
def test_two_workers_train_in_lockstep_and_only_the_chief_writes(tmp_path):
    model_dir = str(tmp_path / "run")
    (first_chief_pid, chief_out), (worker_pid, worker_out) = _run_workers(
        tmp_path / "logs_1", model_dir, "--train_steps=4")

    # Identical weights on both workers: every variable, bit for bit.
    chief_sha, worker_sha = _fingerprint(chief_out), _fingerprint(worker_out)
    assert chief_sha == worker_sha
    # Both trained on the same global batches: the logged (all-reduced) loss agrees too.
    last_step = re.compile(r"^step 4/4 .*?: (.*)$", re.MULTILINE)
    assert last_step.search(chief_out).group(1) == last_step.search(worker_out).group(1)

    # Only the chief wrote into model_dir: checkpoints, logs, result and export are its own.
    names = set(os.listdir(model_dir)) - {".run.lock"}  # the chief's lock file (flock; stays, empty)
    assert names == {"checkpoint", "ckpt-2.index", "ckpt-2.data-00000-of-00001", "ckpt-4.index",
                     "ckpt-4.data-00000-of-00001", "config.json", "result.json", "logs", "saved_model"}
    _assert_only_the_chiefs_wrote(model_dir, [first_chief_pid], worker_pid)
    result = json.load(open(os.path.join(model_dir, "result.json")))
    assert result["weights_sha256"] == chief_sha and result["train_steps"] == 4
    export = os.path.join(model_dir, "saved_model", "4")
    assert result["exported"]["saved_model"] == export
    assert os.listdir(os.path.join(model_dir, "saved_model")) == ["4"]
    for name in ("saved_model.pb", "encoder.keras", os.path.join("variables", "variables.index")):
        assert os.path.exists(os.path.join(export, name)), name
    assert "Exported encoder:" in chief_out and "Exported encoder:" not in worker_out
    # The last checkpoint holds the chief's final weights (its export was written from memory).
    # Compared on the encoder: the projection head's BN statistics are missing from checkpoints.
    exported = _exported_encoder(export)
    assert _same(_checkpoint_encoder(model_dir, os.path.join(model_dir, "ckpt-4")), exported)
    assert not _same(_checkpoint_encoder(model_dir, os.path.join(model_dir, "ckpt-2")), exported)

    # A rerun with more steps: both workers read the chief's checkpoint and stay in lockstep.
    (chief_pid, chief_out), (worker_pid, worker_out) = _run_workers(
        tmp_path / "logs_2", model_dir, "--train_steps=6")
    for out in (chief_out, worker_out):
        assert f"Resuming from {os.path.join(model_dir, 'ckpt-4')} at step 4." in out
    chief_sha, worker_sha = _fingerprint(chief_out), _fingerprint(worker_out)
    assert chief_sha == worker_sha != result["weights_sha256"]
    assert _same(_checkpoint_encoder(model_dir, os.path.join(model_dir, "ckpt-6")),
                 _exported_encoder(os.path.join(model_dir, "saved_model", "6")))
    _assert_only_the_chiefs_wrote(model_dir, [first_chief_pid, chief_pid], worker_pid)
