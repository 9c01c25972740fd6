"""Pieces of multi-process training that can be checked in one process."""

from __future__ import annotations

import torch

from bidsapp_dl.data.loader import EpochSampler
from bidsapp_dl.models import build_model
from bidsapp_dl.train.distributed import Shard, unwrap, world


def test_world_from_torchrun_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert world() == (1, 3)


def test_shards_cover_the_epoch_order_once_each(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    shards = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        shard = Shard(EpochSampler(10, "random", seed=4, epoch=2))
        shards.append(list(shard))
        assert len(shard) == 4 == len(shards[-1])
    order = list(EpochSampler(10, "random", seed=4, epoch=2))
    merged = [shards[i % 3][i // 3] for i in range(12)]
    assert merged[:10] == order and merged[10:] == order[:2]  # padded by wrapping around
    shard = Shard(EpochSampler(10, "random", seed=4, epoch=2))
    shard.set_epoch(3)
    assert list(shard) != shards[2]


def test_unwrap_returns_the_network_inside_torch_compile():
    model = build_model("Conv4_FC3", "classification", (1, 24, 28, 24), 2)
    compiled = torch.compile(model)  # compiling happens at the first call, not here
    assert unwrap(compiled) is model and unwrap(model) is model
    assert set(unwrap(compiled).state_dict()) == set(model.state_dict())
