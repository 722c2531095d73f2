"""Two gloo processes (as torchrun would start them) against one process with the same total batch."""

import json
import os
import socket

import torch
import torch.multiprocessing as mp

from tiny_setup import ToyDetector, make_coco, tiny_recipe
from genattn.models.weights import load_file as load_checkpoint
from genattn.engine.train import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, ports, root, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # 1) the deterministic stand-in, 1 image per process
    os.environ["MASTER_PORT"] = str(ports[0])
    torch.manual_seed(0)
    recipe = tiny_recipe(imgs_per_gpu=1, epochs=2, eval_interval=-1)
    train(recipe, data_root=root, work_dir=out_dir / "toy_ddp", model=ToyDetector(), progress=False)
    # 2) the real tiny model with evaluation sharded over the two processes
    os.environ["MASTER_PORT"] = str(ports[1])
    out = train(tiny_recipe(imgs_per_gpu=1, max_iters=2), data_root=root, work_dir=out_dir / "real_ddp",
                progress=False)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(out))


def test_two_processes_equal_one_process_with_the_same_total_batch(tmp_path):
    root = tmp_path / "data"
    make_coco(root, "train2017", 6)
    make_coco(root, "val2017", 5)  # odd: the shards differ in size
    # fork: the children need not import torch again (20 s of a busy 2-core CPU with spawn)
    mp.start_processes(_worker, args=(2, (_free_port(), _free_port()), root, tmp_path), nprocs=2,
                       start_method="fork")

    torch.manual_seed(0)
    single = train(tiny_recipe(imgs_per_gpu=2, epochs=2, eval_interval=-1), data_root=root,
                   work_dir=tmp_path / "toy_single", model=ToyDetector(), progress=False)
    a = load_checkpoint(single["checkpoint"])
    b = load_checkpoint(tmp_path / "toy_ddp" / "epoch_2.pth")
    assert a["iter"] == b["iter"] == 6 and b["meta"]["world_size"] == 2 and b["meta"]["total_batch"] == 2
    # Same batches, same flips, same learning rate; only the order of float additions differs (DDP averages
    # the two processes' gradients, one process differentiates the mean loss): agreement to 1e-6.
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-6)
    assert len(b["rng"]) == 2  # each process's RNG states

    outs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert outs[0]["metrics"] == outs[1]["metrics"] and outs[0]["metrics"]["num_images"] == 5
    dets = json.loads((tmp_path / "real_ddp" / "iter_2.bbox.json").read_text())
    assert len(dets) == outs[0]["metrics"]["num_detections"]
    assert {d["image_id"] for d in dets} <= set(range(1, 6))


def _preempted_worker(rank, world, ports, root, out_dir):
    import signal

    import genattn.engine.train as train_module
    from genattn.engine.preemption import Preempted

    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # The real tiny model (each process samples its own RoIs: every rank's RNG state must come back), 1 image
    # per process: 3 iterations per epoch, 6 in all; a mid-epoch checkpoint every 4 iterations.
    recipe = tiny_recipe(imgs_per_gpu=1, epochs=2, eval_interval=-1, checkpoint_interval_iters=4,
                         keep_iter_checkpoints=-1)
    os.environ["MASTER_PORT"] = str(ports[0])
    train(recipe, data_root=root, work_dir=out_dir / "whole", progress=False)
    # SIGTERM reaches rank 1 alone, during its 2nd forward pass: both processes stop after iteration 2.
    real_load = train_module.load_model

    def load_model(*args, **kwargs):
        model, info = real_load(*args, **kwargs)
        calls = [0]

        def hook(module, inputs):
            calls[0] += 1
            if rank == 1 and calls[0] == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        model.register_forward_pre_hook(hook)
        return model, info

    train_module.load_model = load_model
    os.environ["MASTER_PORT"] = str(ports[1])
    try:
        train(recipe, data_root=root, work_dir=out_dir / "cut", progress=False)
        stopped = None
    except Preempted as e:
        stopped = {"iteration": e.iteration, "checkpoint": e.checkpoint}
    finally:
        train_module.load_model = real_load
    (out_dir / f"stopped{rank}.json").write_text(json.dumps(stopped))
    # Resumed with 2 loader workers per process: the remaining batches and flips do not depend on them.
    os.environ["MASTER_PORT"] = str(ports[2])
    train(recipe.replace(workers=2), data_root=root, work_dir=out_dir / "cut", auto_resume=True, progress=False)


def test_two_processes_stop_together_on_sigterm_and_resume_exactly_from_mid_epoch(tmp_path):
    root = tmp_path / "data"
    make_coco(root, "train2017", 6)
    mp.start_processes(_preempted_worker, args=(2, (_free_port(), _free_port(), _free_port()), root, tmp_path),
                       nprocs=2, start_method="fork")
    cut = str(tmp_path / "cut" / "iter_2.pth")
    assert [json.loads((tmp_path / f"stopped{r}.json").read_text()) for r in range(2)] == \
        [{"iteration": 2, "checkpoint": cut}] * 2
    mid = load_checkpoint(cut)
    assert (mid["epoch"], mid["iter_in_epoch"], len(mid["rng"])) == (0, 2, 2)
    a = load_checkpoint(tmp_path / "whole" / "epoch_2.pth")
    b = load_checkpoint(tmp_path / "cut" / "epoch_2.pth")
    assert a["iter"] == b["iter"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
