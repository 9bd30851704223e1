"""``refinery strategies``: list every registered strategy with a one-line description."""

from __future__ import annotations

import dataclasses


def add_parser(sub) -> None:
    p = sub.add_parser("strategies", help="list the registered decoding strategies")
    p.add_argument("--params", action="store_true", help="also list each strategy's parameters and defaults")
    p.set_defaults(run=run)


def run(args) -> int:
    from strategies import available_strategies

    items = available_strategies()
    width = max(len(n) for n in items)
    for name, cls in items.items():
        print(f"{name:<{width}}  {cls.description}")
        if args.params:
            for f in dataclasses.fields(cls.config_class):
                print(f"{'':<{width}}    {f.name} = {f.default!r}")
    return 0
