"""Options shared by the commands that run ablation cells (``ablate`` and ``tune``): where the run goes and
what may override the config for this machine without changing any row."""

from __future__ import annotations


def add_run_overrides(p) -> None:
    """--out, --model, --device, --batch-size and --score-workers."""
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--model", default=None,
                   help="override the config's model (checkpoint directory or name); an entry that names its own "
                        "model keeps it")
    p.add_argument("--device", default=None, help="override the config's device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="override the config's batch_size (examples per generate call; e.g. 256 on a GPU); "
                        "rows are the same at any batch size")
    p.add_argument("--score-workers", type=int, default=None, metavar="N",
                   help="override the config's score_workers (sandbox processes scoring code)")
