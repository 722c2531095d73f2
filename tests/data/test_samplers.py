import pytest

from genattn.data import GroupedBatchSampler, ShardedSampler

GROUPS = [0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1]  # 5 of group 0, 6 of group 1


def test_batches_are_grouped_complete_and_seeded():
    s = GroupedBatchSampler(GROUPS, 2, num_replicas=1, rank=0, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 3 + 3
    assert all(len(b) == 2 and len({GROUPS[i] for i in b}) == 1 for b in batches)
    assert sorted({i for b in batches for i in b}) == list(range(len(GROUPS)))  # every index each epoch
    assert list(s) == batches  # same epoch, same order
    s.set_epoch(1)
    assert list(s) != batches


def test_replicas_split_the_single_process_batches():
    whole = list(GroupedBatchSampler(GROUPS, 4, num_replicas=1, rank=0, seed=0))
    parts = [GroupedBatchSampler(GROUPS, 2, num_replicas=2, rank=r, seed=0) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    assert [a + b for a, b in zip(*map(list, parts))] == whole


def test_start_batch_resumes_mid_epoch():
    s = GroupedBatchSampler(GROUPS, 2, num_replicas=1, rank=0, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=4)
    assert list(s) == full[4:]
    with pytest.raises(ValueError, match="start_batch"):
        s.set_epoch(2, start_batch=99)


def test_no_shuffle_keeps_order_and_bad_arguments():
    s = GroupedBatchSampler([0, 0, 0], 2, num_replicas=1, rank=0, shuffle=False)
    assert list(s) == [[0, 1], [2, 0]]  # the group is topped up with its own first index
    with pytest.raises(ValueError, match="batch_size"):
        GroupedBatchSampler(GROUPS, 0, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="rank 2"):
        GroupedBatchSampler(GROUPS, 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="no images"):
        GroupedBatchSampler([], 1, num_replicas=1, rank=0)


def test_sharded_sampler_covers_each_index_once():
    shards = [list(ShardedSampler(7, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
    assert [len(ShardedSampler(7, num_replicas=3, rank=r)) for r in range(3)] == [3, 2, 2]
