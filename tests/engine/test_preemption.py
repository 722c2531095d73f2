"""Mid-epoch checkpoints, SIGTERM and SIGKILL: a resumed run ends with the weights of an uninterrupted one."""

import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

import genattn.engine.train as train_module
from tiny_setup import ToyDetector, make_coco, tiny_recipe
from genattn.engine.checkpoint import find_latest
from genattn.engine.logger import drop_records_after
from genattn.engine.preemption import CheckpointPolicy, Preempted, StopRequest, ignore_stop_signals
from genattn.engine.train import train
from genattn.models.weights import load_file

# 8 images, 2 per step: 4 iterations per epoch, 8 in all; a mid-epoch checkpoint every 3 iterations (3, 6),
# the newest one kept. Flips on, evaluation at each epoch's end.
RECIPE = tiny_recipe(epochs=2, checkpoint_interval_iters=3, eval_interval=1)


def _data(root):
    make_coco(root, "train2017", 8)
    make_coco(root, "val2017", 2)
    return root


def _assert_same_run(a_path, b_path):
    a, b = load_file(a_path), load_file(b_path)
    assert (a["epoch"], a["iter"]) == (b["epoch"], b["iter"])
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"]), key


def _log(work_dir):
    """log.json without its timing fields (the losses of an exact resume are the uninterrupted run's)."""
    records = [json.loads(line) for line in (work_dir / "log.json").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "data_time", "memory")} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: data root and final checkpoint."""
    root = _data(tmp_path_factory.mktemp("data"))
    work = tmp_path_factory.mktemp("whole")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests (conftest's per-test setting comes after this fixture): same sums
    try:
        out = train(RECIPE, data_root=root, work_dir=work, progress=False)
    finally:
        torch.set_num_threads(threads)
    # iter_3 was deleted when iter_6 was written (keep_iter_checkpoints=1); epoch checkpoints stay.
    assert sorted(p.name for p in work.glob("*.pth")) == ["epoch_1.pth", "epoch_2.pth", "iter_6.pth"]
    assert load_file(work / "iter_6.pth")["iter_in_epoch"] == 2
    return root, out["checkpoint"]


def _hook_forward(monkeypatch_or_none, at_call, action, training=True):
    """Make the recipe's detector run ``action()`` at the start of its ``at_call``-th training forward pass
    (evaluation pass with ``training=False``)."""
    real = train_module.load_model

    def load_model(*args, **kwargs):
        model, info = real(*args, **kwargs)
        calls = [0]

        def hook(module, inputs):
            if module.training == training:
                calls[0] += 1
                if calls[0] == at_call:
                    action()

        model.register_forward_pre_hook(hook)
        return model, info

    if monkeypatch_or_none is None:
        train_module.load_model = load_model  # in a forked child: gone with it
    else:
        monkeypatch_or_none.setattr(train_module, "load_model", load_model)


def _sigterm_self():
    # If train() had not caught SIGTERM, this would kill the test session instead of failing a test.
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("at_call, checkpoint", [(2, "iter_2.pth"), (4, "epoch_1.pth")])
def test_sigterm_checkpoints_at_the_next_iteration_and_resumes_exactly(reference, tmp_path, monkeypatch, at_call,
                                                                       checkpoint):
    root, whole = reference
    before = signal.getsignal(signal.SIGTERM)
    _hook_forward(monkeypatch, at_call, _sigterm_self)
    with pytest.raises(Preempted, match=rf"stopped by SIGTERM after iteration {at_call}; checkpoint .*{checkpoint} "
                                        r"written: resume with --auto-resume") as info:
        train(RECIPE, data_root=root, work_dir=tmp_path, progress=False)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is restored
    assert info.value.iteration == at_call and info.value.checkpoint == str(tmp_path / checkpoint)
    assert find_latest(tmp_path) == tmp_path / checkpoint
    assert not (tmp_path / "epoch_1.bbox.json").exists()  # stopping at an epoch's end skips its evaluation
    monkeypatch.undo()
    resumed = train(RECIPE, data_root=root, work_dir=tmp_path, auto_resume=True, progress=False)
    assert resumed["iter"] == 8 and resumed["metrics"]["num_images"] == 2
    _assert_same_run(whole, resumed["checkpoint"])


def _train_then_hang(root, work_dir, workers, hang_at):
    def hang():
        (work_dir / "hanging").touch()
        time.sleep(300)  # until the parent kills this process

    _hook_forward(None, hang_at, hang)
    train(RECIPE.replace(workers=workers), data_root=root, work_dir=work_dir, progress=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_after_a_mid_epoch_checkpoint_then_resume_exactly(reference, tmp_path, workers):
    root, whole = reference
    # Killed inside iteration 8 (epoch 2): iteration 7 is lost, the run resumes from iter_6.pth (mid-epoch 2).
    child = multiprocessing.get_context("fork").Process(target=_train_then_hang, args=(root, tmp_path, workers, 8))
    child.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / "hanging").exists():
        assert child.is_alive() and time.monotonic() < deadline, f"child exit code {child.exitcode}"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert find_latest(tmp_path) == tmp_path / "iter_6.pth"
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["epoch_1.pth", "iter_6.pth"]
    resumed = train(RECIPE.replace(workers=workers), data_root=root, work_dir=tmp_path, auto_resume=True,
                    progress=False)
    assert resumed["iter"] == 8
    _assert_same_run(whole, resumed["checkpoint"])
    # iteration 7, logged before the kill and run again, appears once
    assert _log(tmp_path) == _log(Path(whole).parent)


def _train_in_a_job(root, work_dir):
    os.setpgrp()  # a process group of its own, as a scheduler's job: this process and its loader workers

    def signal_the_job():
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.killpg(0, signal.SIGTERM)

    _hook_forward(None, 2, signal_the_job)
    try:
        train(RECIPE.replace(workers=2), data_root=root, work_dir=work_dir, progress=False)
    except Preempted:
        os._exit(75)
    os._exit(0)


def test_sigterm_to_every_process_of_the_job_including_loader_workers(reference, tmp_path):
    """Schedulers signal every process of a job: the loader workers outlive SIGTERM, the run checkpoints at the
    next iteration boundary and stops with the command line's exit status."""
    root, _ = reference
    child = multiprocessing.get_context("fork").Process(target=_train_in_a_job, args=(root, tmp_path))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 75
    assert find_latest(tmp_path) == tmp_path / "iter_2.pth"


def _evaluate_in_a_job(root, work_dir):
    os.setpgrp()
    # Workers started afresh inherit no handler: only worker_init_fn keeps them alive through a SIGTERM.
    torch.multiprocessing.set_start_method("spawn", force=True)
    # The second validation image: both loader workers have started, and more images are still to come.
    _hook_forward(None, 2, lambda: os.killpg(0, signal.SIGTERM), training=False)
    try:
        train(RECIPE.replace(workers=2), data_root=root, work_dir=work_dir, progress=False)
    except Preempted:
        os._exit(75)
    os._exit(0)


def test_sigterm_to_the_job_during_an_evaluation(tmp_path):
    """A SIGTERM while the run evaluates epoch 1: the evaluation's loader workers outlive it, the run stops with
    the command line's exit status after epoch 1's checkpoint."""
    root = tmp_path / "data"
    make_coco(root, "train2017", 8)
    make_coco(root, "val2017", 4)
    child = multiprocessing.get_context("fork").Process(target=_evaluate_in_a_job, args=(root, tmp_path / "run"))
    child.start()
    child.join(timeout=180)
    assert child.exitcode == 75
    assert find_latest(tmp_path / "run") == tmp_path / "run" / "epoch_1.pth"


def _ignore_then_sigterm():
    ignore_stop_signals(0)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)


def test_loader_workers_ignore_sigterm_whatever_their_start_method():
    """Forked workers inherit the run's handler anyway; workers started afresh (macOS, Python 3.14's Linux default)
    rely on ``worker_init_fn`` to outlive a SIGTERM sent to the whole job."""
    child = multiprocessing.get_context("fork").Process(target=_ignore_then_sigterm)
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0


def test_interval_checkpoints_at_epoch_ends_and_pruning(tmp_path):
    """An interval that falls on an epoch's end without an epoch checkpoint writes iter_N.pth with the counters of
    the epoch boundary; the newest ``keep_iter_checkpoints`` mid-epoch files are kept."""
    make_coco(tmp_path / "data", "train2017", 6)  # 3 iterations per epoch
    recipe = tiny_recipe(epochs=3, eval_interval=-1, checkpoint_interval=3, checkpoint_interval_iters=2,
                         keep_iter_checkpoints=2)
    torch.manual_seed(0)
    whole = train(recipe, data_root=tmp_path / "data", work_dir=tmp_path / "a", model=ToyDetector(), progress=False)
    # Written: iter_2, iter_4, iter_6 (the end of epoch 2), iter_8, epoch_3; pruned to the newest two.
    assert sorted(p.name for p in (tmp_path / "a").glob("*.pth")) == ["epoch_3.pth", "iter_6.pth", "iter_8.pth"]
    ckpt = load_file(tmp_path / "a" / "iter_6.pth")
    assert (ckpt["epoch"], ckpt["iter"], ckpt["iter_in_epoch"]) == (2, 6, 0)
    resumed = train(recipe, data_root=tmp_path / "data", work_dir=tmp_path / "b", model=ToyDetector(),
                    resume=tmp_path / "a" / "iter_6.pth", progress=False)
    _assert_same_run(whole["checkpoint"], resumed["checkpoint"])
    out = train(recipe.replace(keep_iter_checkpoints=-1), data_root=tmp_path / "data", work_dir=tmp_path / "c",
                model=ToyDetector(), progress=False)
    assert sorted(p.name for p in (tmp_path / "c").glob("iter_*.pth")) == [f"iter_{i}.pth" for i in (2, 4, 6, 8)]
    assert out["iter"] == 9


def test_policy_intervals_in_iterations_and_minutes(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    policy = CheckpointPolicy(every_iters=5, every_minutes=2)
    assert [policy.after_iteration(i, [0, 0]) for i in (4, 5, 10)] == [False, True, True]
    assert policy.local_flags() == [0.0, 0.0]
    now[0] += 119
    assert policy.local_flags() == [0.0, 0.0]
    now[0] += 1
    assert policy.local_flags() == [0.0, 1.0]  # two minutes since the start
    assert policy.after_iteration(7, [0, 1]) and policy.stopped_by is None
    policy.saved(7)
    assert policy.local_flags() == [0.0, 0.0] and policy.saved_at == 7
    # Another process got the signal: this one stops too, at the same iteration.
    assert policy.after_iteration(8, [1, 0]) and policy.stopped_by == "SIGTERM"
    assert not CheckpointPolicy().after_iteration(5, [0, 0])  # both off


def test_stop_request_only_sets_a_flag_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs in the main thread between bytecodes
        assert stop.requested and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
    seen = []
    thread = threading.Thread(target=lambda: seen.append(StopRequest().__enter__()._previous))
    thread.start()
    thread.join()
    assert seen == [{}]  # outside the main thread no handler is set (Python forbids it)


def test_dropping_log_records_after_a_checkpoint(tmp_path):
    path = tmp_path / "log.json"
    records = [{"env_info": "x"}, {"mode": "train", "epoch": 1, "iter": 4}, {"mode": "val", "epoch": 1, "iter": 4},
               {"mode": "train", "epoch": 2, "iter": 2}, {"mode": "val", "epoch": 2, "iter": 2}]
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text + '{"mode": "train", "ep')  # a kill while the last line was written
    # 4 iterations per epoch, checkpoint after iteration 5 (epoch 2, iteration 1)
    assert drop_records_after(path, 4, 5) == 3
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in records[:3])
    assert drop_records_after(path, 4, 5) == 0 and drop_records_after(tmp_path / "none.json", 4, 5) == 0


_LEAKED_LOADER = """
import torch
from genattn.engine.preemption import ignore_stop_signals
loader = torch.utils.data.DataLoader(list(range(8)), num_workers=2, worker_init_fn=ignore_stop_signals)
it = iter(loader)  # kept alive until exit, as a traceback kept by a test runner keeps a failed loop's
next(it)
print("ready", flush=True)
"""


def test_a_process_with_live_loader_workers_that_ignore_sigterm_still_exits(tmp_path):
    """multiprocessing stops daemonic children at exit with SIGTERM and waits: the workers ignore it, so genattn
    kills them first (without that, this process, and a whole pytest session, hung at exit)."""
    import subprocess
    import sys

    script = tmp_path / "leak.py"
    script.write_text(_LEAKED_LOADER)
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ready" in done.stdout, done.stderr
    assert time.monotonic() - start < 60
