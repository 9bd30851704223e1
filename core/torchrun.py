"""This process's place under torchrun, read from the environment it sets (RANK, WORLD_SIZE, LOCAL_RANK).

Shared by training (core.train.distributed) and sharded ablations (experiments.shard); outside torchrun it
is rank 0 of 1."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessLayout:
    """This process's place in a multi-process run: ``rank`` of ``world`` processes, ``local_rank`` on its host."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "ProcessLayout":
        """The layout torchrun (or the deepspeed launcher) set; a rank outside [0, world) is a ValueError."""
        rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
        if not 0 <= rank < world:
            raise ValueError(f"environment: RANK={rank} is not in [0, WORLD_SIZE={world})")
        return cls(rank, world, local)

    @property
    def sharded(self) -> bool:
        """True with more than one process (each then owns a share of the work)."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, prints and writes what is written once."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """``device`` for this rank: a bare ``cuda`` becomes this rank's own GPU (``cuda:LOCAL_RANK``)."""
        return f"cuda:{self.local_rank}" if self.sharded and device == "cuda" else device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None
