"""BalancedSampler and inverse-frequency class weights."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from lit_transfer.data.sampler import BalancedSampler, inverse_frequency_weights

IMBALANCED = [0] * 90 + [1] * 9 + [2] * 1  # 90/9/1


def test_every_class_is_drawn_equally_often() -> None:
    sampler = BalancedSampler(IMBALANCED, num_samples=3001, seed=1)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 3001
    counts = Counter(IMBALANCED[i] for i in drawn)
    assert set(counts) == {0, 1, 2} and max(counts.values()) - min(counts.values()) <= 1
    assert Counter(drawn)[99] >= 1000  # the single image of class 2 is drawn a third of the time


def test_default_length_and_within_class_replacement() -> None:
    sampler = BalancedSampler(torch.tensor(IMBALANCED))
    drawn = list(sampler)
    assert len(drawn) == 100
    assert all(0 <= i < 100 for i in drawn)
    class0 = [i for i in drawn if IMBALANCED[i] == 0]
    assert len(class0) in (33, 34) and all(i < 90 for i in class0)


def test_draw_is_reproducible_per_seed_and_epoch() -> None:
    a, b = BalancedSampler(IMBALANCED, seed=3), BalancedSampler(IMBALANCED, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating twice gives the same epoch
    epoch5 = list(a)
    a.set_epoch(6)
    assert list(a) != epoch5
    c = BalancedSampler(IMBALANCED, seed=4)
    c.set_epoch(5)
    assert list(c) != epoch5


@pytest.mark.parametrize("num_samples", [100, 101])
def test_ranks_share_one_global_draw(num_samples: int) -> None:
    shards = [BalancedSampler(IMBALANCED, num_samples=num_samples, seed=9, num_replicas=2, rank=r) for r in (0, 1)]
    for shard in shards:
        shard.set_epoch(2)
    draw = shards[0].global_draw().tolist()
    assert draw == shards[1].global_draw().tolist() and len(draw) == num_samples
    first, second = list(shards[0]), list(shards[1])
    assert len(first) == len(second) == len(shards[0]) == (num_samples + 1) // 2
    # disjoint positions of the same draw: interleaving the shards gives it back (plus one pad for an odd size)
    interleaved = [i for pair in zip(first, second, strict=True) for i in pair]
    assert interleaved[:num_samples] == draw
    assert interleaved[num_samples:] == draw[: len(interleaved) - num_samples]


def test_item_keys_give_every_draw_its_own_augmentation_seed() -> None:
    plain = BalancedSampler(IMBALANCED, seed=2, num_replicas=2, rank=1)
    keyed = BalancedSampler(IMBALANCED, seed=2, num_replicas=2, rank=1, item_keys=True)
    plain.set_epoch(3)
    keyed.set_epoch(3)
    pairs = list(keyed)
    assert [i for i, _ in pairs] == list(plain)
    other = BalancedSampler(IMBALANCED, seed=2, num_replicas=2, rank=0, item_keys=True)
    other.set_epoch(3)
    keys = [k for _, k in pairs] + [k for _, k in other]
    assert len(set(keys)) == len(keys) == 100  # unique over ranks
    keyed.set_epoch(4)
    assert not {k for _, k in keyed} & set(keys)  # and over epochs


def test_lightning_wrapper_shards_the_same_global_draw() -> None:
    # what Lightning does under DDP with use_distributed_sampler: wrap a num_replicas=1 sampler and shard it
    wrapped = [DistributedSamplerWrapper(BalancedSampler(IMBALANCED, seed=5), num_replicas=2, rank=r) for r in (0, 1)]
    for w in wrapped:
        w.set_epoch(1)  # forwarded to the BalancedSampler
    reference = BalancedSampler(IMBALANCED, seed=5)
    reference.set_epoch(1)
    union = Counter(list(wrapped[0]) + list(wrapped[1]))
    assert union == Counter(reference.global_draw().tolist())


def test_inverse_frequency_weights() -> None:
    weights = inverse_frequency_weights(IMBALANCED, 3)
    assert weights.dtype == torch.float32 and weights.shape == (3,)
    assert torch.allclose(weights, torch.tensor([100 / 270, 100 / 27, 100 / 3]))
    per_sample = weights[torch.tensor(IMBALANCED)]
    assert per_sample.mean().item() == pytest.approx(1.0)
    assert torch.allclose(weights[0] * 90, weights[2] * 1)  # each class weighs the same in total
    absent = inverse_frequency_weights(np.array([0, 0, 2]), 4)
    assert absent[1] == 0 and absent[3] == 0 and absent[torch.tensor([0, 0, 2])].mean().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="out of range"):
        inverse_frequency_weights([0, 5], 3)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one label"):
        BalancedSampler([])
    with pytest.raises(ValueError, match="rank"):
        BalancedSampler(IMBALANCED, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_samples"):
        BalancedSampler(IMBALANCED, num_samples=0)
    with pytest.raises(ValueError, match="non-negative"):
        BalancedSampler([0, -1])
