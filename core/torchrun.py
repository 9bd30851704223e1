"""This process's place under torchrun, read from the environment it sets (RANK, WORLD_SIZE, LOCAL_RANK).

Shared by training (core.train.distributed) and sharded ablations (experiments.shard); outside torchrun it
is rank 0 of 1."""

from __future__ import annotations

import os


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


def torchrun_env() -> tuple[int, int, int]:
    """-> (rank, world size, local rank); a rank outside [0, world) is a ValueError naming both."""
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"environment: RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world, local
