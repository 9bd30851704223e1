"""``refinery strategies``: list every registered strategy with a one-line description, or (``--presets``)
one line per strategy and named preset: ``masked  paper  LLaDA generate.py ...``."""

from __future__ import annotations

import dataclasses


def add_parser(sub) -> None:
    p = sub.add_parser("strategies", help="list the registered decoding strategies")
    p.add_argument("--params", action="store_true", help="also list each strategy's parameters and defaults")
    p.add_argument("--presets", action="store_true",
                   help="list the named presets instead: one line per strategy and preset, with its source")
    p.set_defaults(run=run)


def run(args) -> int:
    from refinery.core.typed import describe_range
    from refinery.strategies import available_strategies

    items = available_strategies()
    width = max(len(n) for n in items)
    if args.presets:
        rows = [(name, preset, p) for name, cls in items.items() for preset, p in cls.presets.items()]
        pw = max((len(r[1]) for r in rows), default=0)
        for name, preset, p in rows:
            print(f"{name:<{width}}  {preset:<{pw}}  {p.about}")
            if args.params:
                print(f"{'':<{width}}  {'':<{pw}}    {p.params}")
        return 0
    for name, cls in items.items():
        print(f"{name:<{width}}  {cls.description}")
        if args.params:
            for f in dataclasses.fields(cls.config_class):
                bounds = f.metadata.get("range")  # the field's declared range (core.typed)
                limit = f"  (must {describe_range(bounds, f.metadata.get('open', ''))})" if bounds else ""
                print(f"{'':<{width}}    {f.name} = {f.default!r}{limit}")
    return 0
