"""Defect 7: under data parallelism the training order depends on training.runtime.seed.

Ray's prepare_data_loader installs a DistributedSampler seeded 0 when the loader has none, so
seed replicates differed only in their initial weights. Here each of 2 ranks opens its data as
a Ray worker would (Ray 2.60's own prepare_data_loader, its world size and rank patched in, no
cluster) and the order of the items it trains on is read back from the batches.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.test_train import CPU, data, tiny  # noqa: F401 - `data` is a fixture
from trainables.gslrm.train import Hooks, batches, open_data

WORLD = 2


def ray_wrap_loader(monkeypatch, rank: int):
    """Ray Train's prepare_data_loader as a worker of rank `rank` in a group of WORLD runs it
    (no move to a device: the test reads the indices on the CPU)."""
    from ray.train.torch import train_loop_utils

    monkeypatch.setattr(train_loop_utils.session, "get_world_size", lambda: WORLD)
    monkeypatch.setattr(train_loop_utils.session, "get_world_rank", lambda: rank)
    # a sampler Ray builds asks torch.distributed for the group, as it would in a worker
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: WORLD)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
    accelerator = train_loop_utils._TorchAccelerator()
    return lambda loader: accelerator.prepare_data_loader(loader, move_to_device=False)


def item_order(monkeypatch, data: dict, seed: int, rank: int, epochs: int = 2) -> list[int]:  # noqa: F811
    """The sample indices rank `rank` trains on over `epochs` epochs, in order."""
    config = tiny(data, f"training.runtime.seed={seed}", "training.dataloader.batch_size_per_gpu=1")
    hooks = Hooks(
        device=CPU, rank=rank, world_size=WORLD, wrap_loader=ray_wrap_loader(monkeypatch, rank)
    )
    run = open_data(config, CPU, hooks)
    steps = run.steps_per_epoch * epochs
    return [
        int(batch["sample_index"][0]) for _, batch in itertools.islice(batches(run, 0, seed), steps)
    ]


@pytest.fixture
def no_ray_left_behind():
    """Ray Train's helpers start a local Ray on first use; later tests of this pytest process
    (tests/test_ddp.py) start their own, which ray.init refuses while this one is up."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def test_seed_sets_the_data_order_of_every_rank(monkeypatch, data, no_ray_left_behind) -> None:  # noqa: F811
    pytest.importorskip("ray.train.torch")
    by_seed = {
        seed: [item_order(monkeypatch, data, seed, r) for r in range(WORLD)] for seed in (0, 1)
    }
    for seed, ranks in by_seed.items():
        half = len(ranks[0]) // 2
        epoch0 = [set(order[:half]) for order in ranks]
        assert not epoch0[0] & epoch0[1], seed  # each rank its own share of the epoch
        assert ranks[0][:half] != ranks[0][half:]  # reshuffled each epoch (set_epoch)
    assert by_seed[0][0] != by_seed[1][0] and by_seed[0][1] != by_seed[1][1]
    # and it is a function of the seed: the same seed gives the same order again
    assert item_order(monkeypatch, data, 1, 0) == by_seed[1][0]
