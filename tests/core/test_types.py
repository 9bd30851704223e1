"""core.types is the neutral ground of the loop and the strategies: the import graph has no cycle through it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import refinery.core.decode
import refinery.core.edit_labels
import refinery.core.trace
import refinery.core.types
import refinery.strategies.base
from refinery.strategies.registry import available_strategies

ROOT = Path(__file__).resolve().parents[2]
TOP_PACKAGES = ("core", "strategies", "experiments", "app", "analysis", "refinery")


def imports_of(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """Every import in a file, module level or inside a function: (module, imported names, line)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, tuple(alias.name for alias in node.names), node.lineno))
    return found


def test_imports_of_sees_lazy_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n"
                   "    from refinery.core.decode import strip_padding\n    return strip_padding\n")
    assert imports_of(src) == [("os", (), 1), ("refinery.core.decode", ("strip_padding",), 4)]


def test_core_types_imports_no_project_module():
    bad = [(m, line) for m, _, line in imports_of(ROOT / "core" / "types.py") if m.split(".")[0] in TOP_PACKAGES]
    assert bad == []


# core modules that import nothing of the project's loop or strategies: the shared types, the one typed-config
# path, the one registry type and the error types (test_neutral_modules_import_no_strategy checks it)
NEUTRAL = ("refinery.core.types", "refinery.core.typed", "refinery.core.registry", "refinery.core.errors")


@pytest.mark.parametrize("module", NEUTRAL)
def test_neutral_modules_import_no_strategy_and_no_loop(module):
    path = ROOT.joinpath(*module.split(".")[1:]).with_suffix(".py")
    bad = [(m, line) for m, _, line in imports_of(path)
           if m.split(".")[0] == "refinery" and m not in NEUTRAL]
    assert bad == [], f"{module} imports {bad}"


@pytest.mark.parametrize("path", sorted((ROOT / "strategies").glob("*.py")), ids=lambda p: p.name)
def test_strategies_reach_core_only_through_core_types(path):
    """No strategy module imports the loop, the trace or the edit labels, not even lazily: that was the cycle."""
    bad = [(m, line) for m, _, line in imports_of(path)
           if m.split(".")[:2] == ["refinery", "core"] and m not in NEUTRAL]
    assert bad == [], f"{path.name} imports {bad}"


def test_edit_labels_imports_no_private_name_of_align():
    private = [(names, line) for m, names, line in imports_of(ROOT / "core" / "edit_labels.py")
               if m == "refinery.core.align" and any(n.startswith("_") for n in names)]
    assert private == []


def test_old_homes_re_export_the_same_objects():
    assert refinery.strategies.base.DecodeContext is refinery.core.types.DecodeContext
    assert refinery.strategies.base.DecodeState is refinery.core.types.DecodeState
    assert refinery.strategies.base.ForwardOutput is refinery.core.types.ForwardOutput
    assert refinery.strategies.base.CACHE_MODES is refinery.core.types.CACHE_MODES
    assert refinery.core.trace.StepRecord is refinery.core.types.StepRecord
    assert refinery.core.trace.EVENT_KINDS is refinery.core.types.EVENT_KINDS
    assert refinery.core.edit_labels.apply_edits is refinery.core.types.apply_edits
    assert refinery.core.decode.strip_padding is refinery.core.types.strip_padding


def test_only_edit_declares_the_next_token_head_and_the_delete_token():
    """What a strategy needs of the checkpoint is a declared class attribute, not a test of its name."""
    classes = available_strategies()
    assert {n for n, c in classes.items() if c.needs_next_head} == {"edit"}
    assert {n for n, c in classes.items() if c.needs_delete_token} == {"edit"}
    assert refinery.strategies.base.Strategy.needs_next_head is False


def test_edit_keeps_no_per_call_state_on_itself(tiny_model):
    """Two generations with one strategy object equal two with fresh ones: the call's state lives in the
    DecodeState, and the strategy object holds only what its config determines."""
    from refinery.core.decode import generate
    from refinery.strategies.registry import get_strategy

    shared = get_strategy("edit", edit_passes=2)
    before = dict(vars(shared))
    runs = [generate(tiny_model, [[5, 6, 7]], 8, shared, "1/2", seed=s) for s in (0, 1)]
    assert vars(shared).keys() == before.keys() and all(vars(shared)[k] is before[k] for k in before)
    for s, res in zip((0, 1), runs):
        fresh = generate(tiny_model, [[5, 6, 7]], 8, get_strategy("edit", edit_passes=2), "1/2", seed=s)
        assert res.tokens.tolist() == fresh.tokens.tolist() and res.nfe.tolist() == fresh.nfe.tolist()
        assert res.draft_tokens.tolist() == fresh.draft_tokens.tolist()


def test_loop_owns_step_record_active(tiny_model):
    """A strategy's record leaves ``active`` unset; the loop fills in the rows it charged for the pass."""
    import torch

    from refinery.strategies.registry import get_strategy

    strategy = get_strategy("masked")
    seen = []
    original = strategy.step

    def spy(ctx, state, out):
        record = original(ctx, state, out)
        seen.append(record.active)
        return record

    strategy.step = spy
    records = []
    refinery.core.decode.generate(tiny_model, [[5, 6, 7], [8]], 4, strategy, "1/1",
                                  on_step=lambda i, r: records.append(r))
    assert seen == [None] * 4
    assert all(r.active is not None and r.active.dtype == torch.bool for r in records)
    assert records[0].active.tolist() == [True, True]
