"""Cross-process reductions of the Ridge and per-position statistics on two gloo processes: empty shards, mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import distributed as dist
from torch import multiprocessing as mp

from anomalib_featureridge.models.feature_ridge.distributed import all_reduce, all_reduce_sums
from anomalib_featureridge.models.feature_ridge.local import LocalStatistics
from anomalib_featureridge.models.feature_ridge.ridge import RidgeStatistics


def _statistics(inputs: int, seed: int) -> RidgeStatistics:
    generator = torch.Generator().manual_seed(seed)
    stats = RidgeStatistics()
    stats.update(torch.randn(20, inputs, generator=generator), torch.randn(20, 3, generator=generator))
    return stats


def _local(grid: int, seed: int) -> LocalStatistics:
    generator = torch.Generator().manual_seed(seed)
    stats = LocalStatistics(region=2)
    stats.update(torch.randn(3, 2, grid, grid, generator=generator), torch.randn(3, 3, grid, grid, generator=generator))
    return stats


SCENARIOS = {"one empty shard": [4, None], "different sizes": [4, 6], "no images": [None, None]}
MAP_SCENARIOS = {"maps, one empty shard": [4, None], "maps, different sizes": [4, 6], "maps, no images": [None, None]}


def _worker(rank: int, workdir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=2)
    results = {}
    for name, inputs in SCENARIOS.items():
        size = inputs[rank]
        moments = None if size is None else _statistics(size, seed=rank).moments()
        try:
            reduced, _ = all_reduce(moments, {float(rank)}, torch.device("cpu"))
            results[name] = {"count": float(reduced.count), "xtx": reduced.xtx.tolist()}
        except ValueError as error:
            results[name] = {"error": str(error)}
    for name, grids in MAP_SCENARIOS.items():
        grid = grids[rank]
        sums = None if grid is None else _local(grid, seed=rank)
        try:
            reduced = all_reduce_sums(sums, LocalStatistics(region=2), torch.device("cpu"))
            results[name] = {"count": float(reduced.count), "xy": reduced.xy.flatten().tolist()}
        except ValueError as error:
            results[name] = {"error": str(error)}
    (Path(workdir) / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every scenario on both ranks of one two-process group (starting processes is the slow part)."""
    workdir = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(str(workdir),), nprocs=2)
    return [json.loads((workdir / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_a_process_without_images_adds_nothing_and_gets_the_sum(results: list[dict]) -> None:
    expected = _statistics(4, seed=0)
    for result in results:
        assert result["one empty shard"]["count"] == 20
        torch.testing.assert_close(torch.tensor(result["one empty shard"]["xtx"], dtype=torch.float64), expected.xtx)


def test_statistics_of_different_sizes_are_refused_naming_both(results: list[dict]) -> None:
    for result in results:
        assert "rank 0 has 4 inputs and 3 targets, rank 1 has 6 and 3" in result["different sizes"]["error"]


def test_no_images_on_any_process_is_a_clear_error(results: list[dict]) -> None:
    for result in results:
        assert "No process of this distributed fit saw a training image" in result["no images"]["error"]


def test_per_position_sums_from_one_process_reach_both(results: list[dict]) -> None:
    expected = _local(4, seed=0)
    for result in results:
        assert result["maps, one empty shard"]["count"] == 3
        got = torch.tensor(result["maps, one empty shard"]["xy"], dtype=torch.float64)
        torch.testing.assert_close(got, expected.xy.flatten())


def test_per_position_sums_of_two_grids_are_refused_naming_both(results: list[dict]) -> None:
    for result in results:
        error = result["maps, different sizes"]["error"]
        assert "rank 0 has shallow maps of shape (2, 4, 4), rank 1 (2, 6, 6)" in error
        assert "same backbone, layers and input size" in error


def test_per_position_sums_without_images_anywhere_are_a_clear_error(results: list[dict]) -> None:
    for result in results:
        assert "No process of this distributed fit saw a training image" in result["maps, no images"]["error"]
