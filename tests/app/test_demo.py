"""The Blocks, built and driven through their event functions without launching a server; the CLI."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from refinery.app.backend import MAX_PROMPT_TOKENS
from refinery.app.demo import build_demo
from refinery.app.render import EVENT_STYLES, TokenPieces, TraceView
from refinery.core.decode import generate
from refinery.core.tokenizer import render_prompt
from refinery.cli import main


def _fn(demo: gr.Blocks, name: str):
    return next(f.fn for f in demo.fns.values() if f.name == name)


def _by_id(demo: gr.Blocks, elem_id: str):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


@pytest.fixture(scope="module")
def fixture_view(tiny_pair) -> TraceView:
    model, tok = tiny_pair
    ids = render_prompt(tok, [{"role": "user", "content": "What is 12 + 7?"}])
    trace = generate(model, [ids], 16, "remdm", "1/1", seed=1).trace.compact()
    return TraceView("remdm fixture", trace, pieces=TokenPieces(tok, trace.mask_id))


def test_build_demo_from_a_fixture_trace(app_checkpoint, fixture_view):
    demo = build_demo(model=str(app_checkpoint), views=[fixture_view])
    assert isinstance(demo, gr.Blocks)
    board = _by_id(demo, "rf-board").value
    assert "remdm fixture" in board and "pass 0/" in board
    step = _by_id(demo, "rf-step")
    assert step.maximum == fixture_view.num_passes
    page = _fn(demo, "on_step")(3, [fixture_view])
    assert "pass 3/" in page and f'ev-unmasked" style="background:{EVENT_STYLES["unmasked"][0]}' in page
    k, page, _ = _fn(demo, "on_tick")(fixture_view.num_passes - 1, [fixture_view])
    assert k == fixture_view.num_passes and f"pass {k}/{k}" in page


def test_analytics_are_off_by_default(app_checkpoint):
    import os

    demo = build_demo(model=str(app_checkpoint))
    assert demo.analytics_enabled is False and demo.get_config_file()["analytics_enabled"] is False
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"  # set before gradio was imported by app.demo


def test_run_handler_streams_to_done(app_checkpoint):
    demo = build_demo(model=str(app_checkpoint), stream_interval=0.01)
    on_run = _fn(demo, "on_run")
    inputs = next(f for f in demo.fns.values() if f.name == "on_run").inputs
    defaults = [c.value for c in inputs[7:]]  # the strategy parameter widgets, as first shown
    updates = list(on_run(str(app_checkpoint), "What is 12 + 7?", None, ["masked", "remdm"], "1/2", 16, 0,
                          *defaults))
    status, slider, board, views = updates[-1]
    assert status == "Done." and len(views) == 2 and all(v.final_text is not None for v in views)
    assert slider["maximum"] == max(v.num_passes for v in views)
    assert board.count('class="rf-col"') == 2 and "final text" in board
    with pytest.raises(gr.Error, match=str(MAX_PROMPT_TOKENS)):
        list(on_run(str(app_checkpoint), "lazy dog " * 600, None, ["masked"], "1/2", 16, 0, *defaults))
    with pytest.raises(gr.Error, match="at least one strategy"):
        list(on_run(str(app_checkpoint), "hi", None, [], "1/2", 16, 0, *defaults))


def test_cli_app_rejects_bad_arguments(tmp_path, capsys):
    assert main(["app", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    assert main(["app", "--runs-dir", str(tmp_path / "none")]) == 2
    assert "--runs-dir is not a directory" in capsys.readouterr().err


def test_generation_limits_follow_the_model(app_checkpoint):
    from refinery.core.checkpoint import EMBEDDED

    demo = build_demo(model=str(app_checkpoint), stream_interval=0.01)
    widget = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "Generation length")
    assert widget.maximum == 512  # the tiny checkpoint's max_sequence_length (the app's own cap is 1024)
    assert _fn(demo, "on_model")("embedded")["maximum"] == json.loads(
        (EMBEDDED["embedded"] / "config.json").read_text())["max_sequence_length"]
    on_run = _fn(demo, "on_run")
    defaults = [c.value for c in next(f for f in demo.fns.values() if f.name == "on_run").inputs[7:]]
    with pytest.raises(gr.Error, match="max_sequence_length is 512"):
        list(on_run(str(app_checkpoint), "What is 12 + 7?", None, ["masked"], "1/1", 500, 0, *defaults))


def test_exposed_demo_refuses_paths_outside_what_the_command_line_gave(app_checkpoint, tmp_path):
    from refinery.app.guard import PathGuard, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")
    runs = tmp_path / "runs"
    runs.mkdir()
    guard = PathGuard(restricted=True, models=[str(app_checkpoint)], runs_root=str(runs))
    demo = build_demo(model=str(app_checkpoint), runs_dir=str(runs), guard=guard, stream_interval=0.01)
    defaults = [c.value for c in next(f for f in demo.fns.values() if f.name == "on_run").inputs[7:]]
    with pytest.raises(gr.Error, match="refused: this demo is reachable from other machines"):
        list(_fn(demo, "on_run")(str(tmp_path), "hi", None, ["masked"], "1/1", 8, 0, *defaults))
    with pytest.raises(gr.Error, match="started without --data-dir"):
        _fn(demo, "on_draw")("gsm8k", 0, str(tmp_path), 0)
    with pytest.raises(gr.Error, match=f"only directories under {runs}"):
        _fn(demo, "on_dir")(str(tmp_path))
    with pytest.raises(gr.Error, match="no rows.jsonl"):  # inside --runs-dir: allowed, then simply empty
        _fn(demo, "on_dir")(str(runs))
    updates = list(_fn(demo, "on_run")(str(app_checkpoint), "hi", None, ["masked"], "1/1", 8, 0, *defaults))
    assert updates[-1][0] == "Done."
    open_guard = PathGuard()  # a loopback demo: every path goes through as before
    assert open_guard.run_dir("/etc") == "/etc" and open_guard.model("/anything") == "/anything"
