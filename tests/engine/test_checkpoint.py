import random

import numpy as np
import pytest
import torch

from genattn.engine import checkpoint as ck
from genattn.models.weights import load_file


def test_atomic_save_and_latest(tmp_path):
    assert ck.find_latest(tmp_path) is None
    ck.save_checkpoint({"a": torch.ones(2)}, tmp_path / "epoch_1.pth")
    ck.save_checkpoint({"a": torch.zeros(2)}, tmp_path / "epoch_2.pth")
    assert ck.find_latest(tmp_path) == tmp_path / "epoch_2.pth"
    assert torch.equal(load_file(tmp_path / "epoch_2.pth")["a"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pth", "epoch_2.pth", "last_checkpoint"]


def test_a_killed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    ck.save_checkpoint({"step": 1, "w": torch.arange(4)}, path)
    before = path.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint({"step": 2, "w": torch.arange(8)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert load_file(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "latest.pth"]  # no .tmp left


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    ck.save_checkpoint({"rng": ck.rng_state()}, tmp_path / "r.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    ck.set_rng_state(load_file(tmp_path / "r.pth")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_unreadable_or_foreign_checkpoints_give_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint .*none\.pth: not found"):
        ck.load_training_checkpoint(tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"checkpoint .*junk\.pth: not a readable PyTorch checkpoint") as info:
        ck.load_training_checkpoint(tmp_path / "junk.pth")
    assert "\n" not in str(info.value)
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "weights.pth")
    with pytest.raises(ValueError, match=r"weights\.pth: not a genattn training checkpoint"):
        ck.load_training_checkpoint(tmp_path / "weights.pth")


def test_pruning_keeps_the_newest_mid_epoch_checkpoints_and_every_epoch_checkpoint(tmp_path):
    names = ["epoch_1.pth", "iter_2.pth", "iter_10.pth", "iter_30.pth", "iter_40.pth", "iter_7.pth.tmp", "iter_x.pth"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    # iter_40 is from a run later resumed from an earlier checkpoint: not older than the one just written (30).
    assert ck.prune_iter_checkpoints(tmp_path, keep=-1, newest=30) == []
    assert sorted(p.name for p in ck.prune_iter_checkpoints(tmp_path, keep=2, newest=30)) == ["iter_2.pth"]
    assert ck.prune_iter_checkpoints(tmp_path, keep=1, newest=30) == [tmp_path / "iter_10.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pth", "iter_30.pth", "iter_40.pth",
                                                          "iter_7.pth.tmp", "iter_x.pth"]
