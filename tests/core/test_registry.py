"""core.registry: one registry type for strategies and tasks (base class checked, lazy targets, did-you-mean)."""

from __future__ import annotations

import sys
import types

import pytest

from refinery.core.registry import Registry, unknown_name_message


class Base:
    name = ""


def test_register_get_and_did_you_mean():
    reg: Registry[Base] = Registry("widget", base=Base)

    @reg.register("round")
    class Round(Base):
        pass

    reg.register("square", type("Square", (Base,), {}))
    assert reg.get("round") is Round and reg["round"] is Round and Round.name == "round"
    assert "square" in reg and "cube" not in reg and list(reg) == ["round", "square"] and len(reg) == 2
    assert reg.as_dict()["square"].name == "square"
    with pytest.raises(KeyError) as info:
        reg.get("rund")
    assert info.value.args[0] == "Unknown widget 'rund'. Did you mean 'round'? Available: round, square"
    with pytest.raises(KeyError, match=r"^.Unknown widget 'zzz'\. Available: round, square.$"):
        reg.get("zzz")  # nothing close: no suggestion


def test_base_class_and_duplicates_are_checked():
    reg: Registry[Base] = Registry("widget", base=Base)
    with pytest.raises(TypeError, match="widget 'plain': Plain is not a subclass of Base"):
        reg.register("plain", type("Plain", (), {}))
    first = reg.register("a", type("A", (Base,), {}))
    reg.register("a", first)  # the same class again (a module imported twice) is fine
    with pytest.raises(ValueError, match=r"widget 'a' registered twice \(A, B\)"):
        reg.register("a", type("B", (Base,), {}))


def test_lazy_targets_are_imported_and_checked_on_first_use(monkeypatch):
    class Lazy(Base):
        pass

    class NotAWidget:
        pass

    Lazy.__module__ = NotAWidget.__module__ = "fake_widgets"
    reg: Registry[Base] = Registry("widget", base=Base)
    reg.register("lazy", "fake_widgets:Lazy")  # the module does not exist yet: nothing is imported here
    reg.register("wrong", "fake_widgets:NotAWidget")
    assert reg.names() == ["lazy", "wrong"] and "lazy" in reg and Lazy.name == ""
    module = types.ModuleType("fake_widgets")
    module.Lazy, module.NotAWidget = Lazy, NotAWidget
    monkeypatch.setitem(sys.modules, "fake_widgets", module)
    assert reg.get("lazy") is Lazy and Lazy.name == "lazy"
    reg.register("lazy", Lazy)  # the lazy module's own decorator, run when it is imported: no clash
    with pytest.raises(TypeError, match="widget 'wrong': NotAWidget is not a subclass of Base"):
        reg.get("wrong")
    bad = Registry("widget")
    bad.register("x", "no_colon_here")
    with pytest.raises(ValueError, match="must look like 'package.module:attr'"):
        bad.get("x")


def test_strategies_and_tasks_share_the_registry_type_and_message():
    from refinery.core.tasks.base import TASKS, Task, get_task
    from refinery.strategies.base import Strategy
    from refinery.strategies.registry import STRATEGIES, get_strategy

    assert isinstance(TASKS, Registry) and isinstance(STRATEGIES, Registry)
    assert {"arith", "gsm8k", "pycode"} <= set(TASKS) and {"masked", "edit", "remdm"} <= set(STRATEGIES)
    assert all(issubclass(TASKS[n], Task) for n in TASKS)
    assert all(issubclass(c, Strategy) for c in STRATEGIES.as_dict().values())
    with pytest.raises(KeyError) as task_err:
        get_task("arithm")
    assert task_err.value.args[0] == unknown_name_message("task", "arithm", TASKS.names())
    assert task_err.value.args[0].startswith("Unknown task 'arithm'. Did you mean 'arith'?")
    with pytest.raises(KeyError, match=r"Unknown strategy 'maskd'\. Did you mean 'masked'\?"):
        get_strategy("maskd")
    with pytest.raises(TypeError, match="not a subclass of Strategy"):
        STRATEGIES.register("not-a-strategy", type("NotAStrategy", (), {}))
    assert "not-a-strategy" not in STRATEGIES
