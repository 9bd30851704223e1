"""One generic registry type: names -> classes, for strategies and tasks alike.

    STRATEGIES = Registry("strategy", base="refinery.strategies.base:Strategy", populate="refinery.strategies")

    @STRATEGIES.register("masked")          # a class decorator: the class gets ``name = "masked"``
    class MaskedStrategy(Strategy): ...

    STRATEGIES.register("mine", "my_pkg.mine:MineStrategy")   # lazy: imported on first use
    STRATEGIES.get("maskd")   # KeyError: Unknown strategy 'maskd'. Did you mean 'masked'? Available: ...

Every entry must be a subclass of ``base`` (checked when registered, or when a lazy target is first
imported). ``populate`` names a module whose import registers the built-in entries; it is imported before
the first lookup, so ``get`` works whichever module the caller imported first.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Generic, Iterator, Optional, TypeVar, Union

T = TypeVar("T")


def suggest(name: str, known: list[str]) -> str:
    """" Did you mean 'x'?" for the closest known names (up to three), or "" when none is close."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """"Unknown strategy 'x'. Did you mean ...? Available: ..." (every registry and preset table of refinery)."""
    return f"Unknown {kind} {name!r}.{suggest(name, available)} Available: {', '.join(sorted(available))}"


def import_target(target: str) -> Any:
    """The object a "package.module:attr" string names (imported now)."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"lazy target {target!r} must look like 'package.module:attr'")
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    """Named classes of one kind, each a subclass of ``base``; lookups suggest close names."""

    def __init__(self, kind: str, base: Union[type, str, None] = None, populate: Optional[str] = None,
                 name_attr: Optional[str] = "name"):
        self.kind = kind  # what an entry is called in messages ("strategy", "task")
        self._base = base  # a class or a lazy "module:attr" string (resolved at the first check)
        self._populate = populate  # module whose import registers the built-in entries
        self._name_attr = name_attr  # class attribute that receives the registered name (None: leave it)
        self._entries: dict[str, Union[T, str]] = {}  # a str value is a lazy target not imported yet

    def register(self, name: str, target: Union[T, str, None] = None) -> Any:
        """``@registry.register(name)`` on a class, or ``register(name, cls_or_lazy_target)`` (returns it)."""
        if target is not None:
            self._add(name, target)
            return target

        def wrap(obj: T) -> T:
            self._add(name, obj)
            return obj

        return wrap

    def _add(self, name: str, target: Union[T, str]) -> None:
        old = self._entries.get(name)
        if old is not None and old is not target:
            if not isinstance(old, str) or isinstance(target, str) or old != _target_of(target):
                raise ValueError(f"{self.kind} {name!r} registered twice ({_label(old)}, {_label(target)})")
        self._entries[name] = target if isinstance(target, str) else self._checked(name, target)

    def _checked(self, name: str, obj: T) -> T:
        base = import_target(self._base) if isinstance(self._base, str) else self._base
        if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
            raise TypeError(f"{self.kind} {name!r}: {_label(obj)} is not a subclass of {base.__name__}")
        if self._name_attr is not None:
            setattr(obj, self._name_attr, name)
        return obj

    def _fill(self) -> None:
        if self._populate is not None:
            importlib.import_module(self._populate)  # a no-op once imported

    def get(self, name: str) -> T:
        """The entry registered as ``name`` (a lazy target is imported and checked now)."""
        self._fill()
        if name not in self._entries:
            raise KeyError(unknown_name_message(self.kind, name, list(self._entries)))
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = self._entries[name] = self._checked(name, import_target(entry))
        return entry

    def names(self) -> list[str]:
        """Every registered name, sorted (lazy targets are not imported)."""
        self._fill()
        return sorted(self._entries)

    def as_dict(self) -> dict[str, T]:
        """Every entry by sorted name (imports any lazy targets)."""
        return {name: self.get(name) for name in self.names()}

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self._fill()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _target_of(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', '?')}"


def _label(obj: Any) -> str:
    return obj if isinstance(obj, str) else getattr(obj, "__name__", repr(obj))
