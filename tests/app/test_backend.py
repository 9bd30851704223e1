"""The demo's computing side: streamed generation, prompt caps, parameter forms, saved runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from refinery.app import backend
from refinery.app.params import changed_params, field_specs, parse_value, short_label, widget_value
from refinery.app.runs import find_runs, load_row_trace, load_rows, pick_rows, row_label
from refinery.core.decode import generate
from refinery.core.tokenizer import decode_response, render_prompt
from refinery.strategies import available_strategies, get_strategy

GEN = 16


@pytest.fixture(scope="module")
def prompt(tiny_pair):
    return render_prompt(tiny_pair[1], [{"role": "user", "content": "Compute 3 * 4 - 5."}])


def test_stream_generate_streams_prefixes_and_ends_with_generate_result(tiny_pair, prompt):
    model, _ = tiny_pair
    updates = list(backend.stream_generate(model, prompt, GEN, get_strategy("masked"), "1/2", seed=5,
                                           interval=0.0005))
    final, result = updates[-1]
    assert result is not None and all(r is None for _, r in updates[:-1])
    direct = generate(model, [prompt], GEN, "masked", "1/2", seed=5)
    assert torch.equal(result.tokens, direct.tokens)
    assert np.array_equal(final.tokens, direct.trace.compact().tokens)
    partials = [t for t, r in updates[:-1]]
    assert partials, "no partial update was streamed"
    for t in partials:  # every streamed trace is a prefix of the final one
        assert 0 < t.num_passes <= final.num_passes
        assert np.array_equal(t.tokens, final.tokens[: t.num_passes])
        t.replay()


def test_stream_generate_reraises_worker_errors(tiny_pair, prompt):
    model, _ = tiny_pair
    with pytest.raises(ValueError, match="block_length"):
        list(backend.stream_generate(model, prompt, GEN, get_strategy("masked", block_length=5), "1/2"))


def test_run_views_fills_columns_and_reports_bad_configs_in_place(tiny_pair, prompt):
    model, tok = tiny_pair
    specs = [backend.RunSpec("masked", {}, "masked"), backend.RunSpec("masked", {"block_length": 5}, "bad"),
             backend.RunSpec("remdm", {}, "remdm")]
    *_, views = backend.run_views(model, tok, prompt, specs, "1/2", GEN, 0, interval=0.01)
    good, bad, remdm = views
    direct = generate(model, [prompt], GEN, "masked", "1/2", seed=0)
    assert good.final_text == decode_response(tok, direct.tokens[0].tolist())
    assert good.nfe == int(direct.nfe[0]) and good.max_nfe == direct.max_nfe
    assert bad.trace is None and "block_length=5" in bad.note
    assert remdm.trace is not None and remdm.num_passes == GEN // 2


def test_prompt_and_length_caps(tiny_pair):
    _, tok = tiny_pair
    with pytest.raises(ValueError, match=f"caps prompts at {backend.MAX_PROMPT_TOKENS}"):
        backend.prompt_ids(tok, "lazy dog " * 600)
    with pytest.raises(ValueError, match="empty"):
        backend.prompt_ids(tok, "   ")
    assert backend.check_gen_length(backend.MAX_GEN_LENGTH) == backend.MAX_GEN_LENGTH
    with pytest.raises(ValueError, match="1..1024"):
        backend.check_gen_length(backend.MAX_GEN_LENGTH + 1)
    # with the model's positions: what is left after the prompt
    assert backend.check_gen_length(200, max_sequence_length=256, prompt_tokens=56) == 200
    with pytest.raises(ValueError, match=r"1..199: the model's max_sequence_length is 256 .* 57 tokens"):
        backend.check_gen_length(200, max_sequence_length=256, prompt_tokens=57)
    assert backend.max_gen_length(4096) == backend.MAX_GEN_LENGTH and backend.max_gen_length(None) == 1024


def test_model_cache_loads_once_per_directory(app_checkpoint):
    cache = backend.ModelCache()
    m1, t1 = cache.get(str(app_checkpoint))
    m2, _ = cache.get(str(app_checkpoint) + "/")
    assert m1 is m2 and cache.tokenizer(str(app_checkpoint)) is t1
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        cache.get(str(app_checkpoint / "nope"))


@pytest.mark.parametrize("name", sorted(available_strategies()))
def test_param_forms_round_trip_defaults_for_every_strategy(name):
    cls = available_strategies()[name]
    specs = field_specs(name, cls.config_class)
    assert [s.name for s in specs] == list(cls.config_class.__dataclass_fields__)
    assert changed_params(specs, [widget_value(s) for s in specs], name) == {}


def test_param_forms_parse_changes_and_name_bad_fields():
    specs = field_specs("masked", available_strategies()["masked"].config_class)
    values = {s.name: widget_value(s) for s in specs}
    values.update(block_length="8", temperature=0.5, remasking="random")
    params = changed_params(specs, list(values.values()), "masked")
    assert params == {"block_length": 8, "temperature": 0.5, "remasking": "random"}
    assert get_strategy("masked", **params).config.block_length == 8
    assert short_label("masked", {"block_length": 8}) == "masked (block_length=8)"
    bad = next(s for s in specs if s.name == "block_length")
    with pytest.raises(ValueError, match="'masked', parameter 'block_length'"):
        parse_value(bad, "{oops")


def _write_run(run_dir, tiny_pair, prompt) -> list[dict]:
    """A run directory in the ablation store's format: two strategies on one example, traces saved."""
    model, tok = tiny_pair
    (run_dir / "traces").mkdir(parents=True)
    rows = []
    for i, name in enumerate(("masked", "remdm")):
        res = generate(model, [prompt, prompt], GEN, name, "1/2", seed=i)
        res.trace.compact().save(run_dir / "traces" / f"b{i}.npz")
        for b, ex in enumerate(("ex0", "ex1")):
            rows.append(dict(task="arith", example_id=ex, strategy=name, label=name, budget="1/2", seed=i,
                             output=decode_response(tok, res.tokens[b].tolist()), correct=b == 0,
                             nfe=int(res.nfe[b]), max_nfe=res.max_nfe, trace_file=f"traces/b{i}.npz",
                             trace_row=b))
    (run_dir / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_saved_run_views_read_traces_without_recomputing(tmp_path, tiny_pair, prompt):
    _, tok = tiny_pair
    run = tmp_path / "runs" / "r1"
    rows = _write_run(run, tiny_pair, prompt)
    assert find_runs(tmp_path / "runs") == [str(run)] and find_runs(tmp_path / "missing") == []
    loaded = load_rows(run)
    assert loaded == rows
    picked = pick_rows(loaded, "arith", "ex1")
    assert [row_label(r) for r in picked] == ["masked @ 1/2 seed 0", "remdm @ 1/2 seed 1"]
    views = backend.saved_views(str(run), picked, tok)
    for view, row in zip(views, picked):
        assert view.final_text == row["output"] and view.nfe == row["nfe"] and view.correct is False
        trace, index = load_row_trace(run, row)
        assert index == 1 and view.row == 1
        assert decode_response(tok, trace.tokens[-1, 1].tolist()) == row["output"]


def test_saved_run_errors_name_the_file(tmp_path, tiny_pair, prompt):
    run = tmp_path / "r"
    rows = _write_run(run, tiny_pair, prompt)
    (run / "traces" / "b1.npz").unlink()
    with pytest.raises(FileNotFoundError, match="b1.npz"):
        load_row_trace(run, rows[-1])
    with open(run / "rows.jsonl", "a") as f:
        f.write("{broken\n")
    with pytest.raises(ValueError, match="rows.jsonl:5"):
        load_rows(run)
    with pytest.raises(FileNotFoundError, match="rows.jsonl"):
        load_rows(tmp_path / "empty")


class _FakeTask:
    """Stands in for a core.tasks Task: examples with known answers, exact-match scoring."""

    def __init__(self, **kw):
        self.kw = kw

    def examples(self, split, n, seed):
        from types import SimpleNamespace

        return [SimpleNamespace(id=f"{split}-{seed}-{i}", prompt=f"What is {i} + {seed}?", reference=str(i + seed),
                                messages=lambda i=i: [{"role": "user", "content": f"What is {i} + {seed}?"}])
                for i in range(n)]

    def score(self, example, output):
        from types import SimpleNamespace

        return SimpleNamespace(correct=output.strip() == example.reference, extracted=output.strip())


@pytest.fixture
def fake_tasks(monkeypatch):
    import sys
    from types import ModuleType

    module = ModuleType("refinery.core.tasks")
    module.get_task = lambda name, **kw: _FakeTask(name=name, **kw)
    monkeypatch.setitem(sys.modules, "refinery.core.tasks", module)


def test_draw_example_and_score_a_task_prompt(fake_tasks, tiny_pair, tmp_path):
    model, tok = tiny_pair
    choice = backend.draw_example("arith", 2, 7, None)
    assert choice.example.id == "test-7-2" and choice.task.kw == {"name": "arith"}
    ids = backend.prompt_ids(tok, "ignored: the task's own messages are used", choice)
    assert ids == render_prompt(tok, [{"role": "user", "content": "What is 2 + 7?"}])
    bench = backend.draw_example("gsm8k", 0, 0, str(tmp_path))
    assert bench.task.kw["data_dir"] == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="benchmark data directory"):
        backend.draw_example("gsm8k", 0, 0, str(tmp_path / "missing"))
    *_, views = backend.run_views(model, tok, ids, [backend.RunSpec("masked")], "1/2", GEN, 0, choice)
    expected = views[0].final_text.strip() == choice.example.reference
    assert views[0].correct is expected and views[0].note == f"extracted {views[0].final_text.strip()!r}"
    right = backend.finish_view(views[0], tok, 1, 1, choice, output=choice.example.reference)
    assert right.correct is True


def test_draw_example_from_the_real_embedded_task():
    tasks = pytest.importorskip("refinery.core.tasks", reason="core.tasks (helper B) not in this tree yet")
    choice = backend.draw_example("arith", 0, 0, None)
    assert choice.example.prompt and choice.example.task == "arith"
    assert isinstance(tasks.get_task("arith").score(choice.example, str(choice.example.reference)).correct, bool)
