"""The Gradio edit-trace demo: pick a model, a prompt and strategies, then watch every pass side by side.

    demo = build_demo(model="embedded", runs_dir="runs")
    demo.launch(server_name="127.0.0.1", css=CSS)

``build_demo`` only wires components; nothing is loaded until the first Run (models) or Open (traces).
All decoding goes through :func:`core.decode.generate` (via :mod:`app.backend`); saved ablation traces
are read as they are, never recomputed.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio reads it: no usage pings by default

import gradio as gr  # noqa: E402

from refinery.app import backend
from refinery.app.guard import PathGuard
from refinery.app.params import FieldSpec, changed_params, field_specs, short_label, widget_value
from refinery.app.render import CSS, TraceView, board_html
from refinery.app.runs import find_runs, load_rows, pick_rows, row_label, run_model

log = logging.getLogger(__name__)

SOURCES = (backend.FREE_TEXT, *backend.EMBEDDED_TASKS, *backend.BENCHMARK_TASKS)


def _model_choices(default: str) -> list[str]:
    from refinery.core.checkpoint import EMBEDDED

    names = [n for n, p in EMBEDDED.items() if (p / "config.json").is_file()]
    return list(dict.fromkeys([default, *names]))


def _param_widgets(specs: Sequence[FieldSpec]) -> list[gr.components.Component]:
    """One input per config field, grouped per strategy in closed accordions."""
    widgets, current = [], None
    for strategy in dict.fromkeys(s.strategy for s in specs):
        with gr.Accordion(f"{strategy} parameters", open=False):
            for spec in (s for s in specs if s.strategy == strategy):
                label, value = spec.name, widget_value(spec)
                if spec.widget == "choice":
                    current = gr.Dropdown(list(spec.choices), value=value, label=label)
                elif spec.widget == "bool":
                    current = gr.Checkbox(value=bool(value), label=label)
                elif spec.widget in ("int", "float"):
                    current = gr.Number(value=value, label=label, precision=0 if spec.widget == "int" else None)
                else:
                    current = gr.Textbox(value=value, label=f"{label} (JSON, blank = none)")
                widgets.append(current)
    return widgets


def _slider(views: Sequence[TraceView], value: Optional[int] = None) -> dict:
    top = max([v.num_passes for v in views] + [1])
    return gr.update(maximum=top, value=top if value is None else min(value, top))


def build_demo(model: str = "embedded", runs_dir: Optional[str] = None, data_dir: Optional[str] = None,
               device: str = "cpu", dtype=None, views: Optional[list[TraceView]] = None,
               stream_interval: float = 0.25, guard: Optional[PathGuard] = None) -> gr.Blocks:
    """The demo as a ``gr.Blocks`` (not launched). ``views`` pre-fills the board (e.g. with a fixture trace);
    ``guard`` limits the path fields (see :mod:`app.guard`; None: any path, for a loopback demo)."""
    from refinery.strategies import available_strategies

    guard = guard or PathGuard()
    cache = backend.ModelCache(device, dtype)
    classes = available_strategies()
    specs = [spec for name, cls in classes.items() for spec in field_specs(name, cls.config_class)]
    views = list(views or [])

    with gr.Blocks(title="refinery: decoding traces", analytics_enabled=False) as demo:
        gr.Markdown("## refinery — what each decoding strategy does, pass by pass")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                model_box = gr.Dropdown(_model_choices(model), value=model, allow_custom_value=True,
                                        label="Model (shipped name or checkpoint directory)")
                with gr.Tab("Decode"):
                    with gr.Row():
                        source = gr.Dropdown(list(SOURCES), value=backend.FREE_TEXT, label="Prompt source")
                        index = gr.Number(value=0, precision=0, label="Example #", minimum=0)
                    data_box = gr.Textbox(value=data_dir or "", label="Benchmark data directory")
                    draw = gr.Button("Draw example")
                    prompt = gr.Textbox(lines=4, label="Prompt", elem_id="rf-prompt")
                    chosen = gr.CheckboxGroup(list(classes), value=[next(iter(classes))], label="Strategies",
                                              info="; ".join(f"{n}: {c.description}" for n, c in classes.items()))
                    param_widgets = _param_widgets(specs)
                    with gr.Row():
                        budget = gr.Textbox(value="1/2", label="Budget (passes per token)")
                        top = backend.max_gen_length(backend.model_max_sequence_length(model))
                        gen_length = gr.Number(value=min(32, top), precision=0, minimum=1, maximum=top,
                                               label="Generation length")
                        seed = gr.Number(value=0, precision=0, label="Seed")
                    run = gr.Button("Run", variant="primary", elem_id="rf-run")
                with gr.Tab("Saved run"):
                    run_dir = gr.Dropdown(find_runs(runs_dir), value=None, allow_custom_value=True,
                                          label="Run directory (holds rows.jsonl)")
                    task = gr.Dropdown([], label="Task")
                    example = gr.Dropdown([], label="Example")
                    labels = gr.Dropdown([], multiselect=True, label="Strategies")
                    open_btn = gr.Button("Open traces", variant="primary", elem_id="rf-open")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="rf-status")
                with gr.Row():
                    step = gr.Slider(0, max([v.num_passes for v in views] + [1]), step=1, value=0,
                                     label="Pass (0 = all masks)", elem_id="rf-step", scale=4)
                    play = gr.Button("Play", elem_id="rf-play", scale=1)
                    pause = gr.Button("Pause", scale=1)
                board = gr.HTML(board_html(views, 0), css_template=CSS, elem_id="rf-board")
        views_state = gr.State(views)
        choice_state = gr.State(None)
        timer = gr.Timer(0.5, active=False)

        def on_draw(src, idx, ddir, sd):
            if src == backend.FREE_TEXT:
                return gr.update(), None, "Free text: type a prompt."
            try:
                choice = backend.draw_example(src, int(idx or 0), int(sd or 0), guard.data_dir(ddir) if ddir else None)
            except (ValueError, FileNotFoundError, KeyError, ImportError) as e:
                raise gr.Error(str(e)) from None
            ex = choice.example
            return ex.prompt, choice, f"Example `{ex.id}` of **{src}** (reference: `{ex.reference}`)"

        draw.click(on_draw, [source, index, data_box, seed], [prompt, choice_state, status])

        def on_run(model_name, text, choice, names, bud, length, sd, *raw):
            names = list(names or [])
            if not names:
                raise gr.Error("pick at least one strategy")
            try:
                run_specs = []
                for name in names:
                    params = changed_params(specs, raw, name)
                    run_specs.append(backend.RunSpec(name, params, short_label(name, params)))
                length = backend.check_gen_length(length or 0)
                mdl, tok = cache.get(guard.model(model_name))
                if choice is not None and text.strip() != str(choice.example.prompt).strip():
                    choice = None  # the prompt was edited: no longer the task's example, nothing to score
                ids = backend.prompt_ids(tok, text, choice)
                backend.check_gen_length(length, mdl.config.max_sequence_length, len(ids))
            except (ValueError, FileNotFoundError, KeyError) as e:
                raise gr.Error(e.args[0] if isinstance(e, KeyError) and e.args else str(e)) from None
            current: list[TraceView] = []
            for current in backend.run_views(mdl, tok, ids, run_specs, str(bud), length, int(sd or 0), choice,
                                             stream_interval):
                top = max(v.num_passes for v in current)
                yield (f"Running… {len(ids)} prompt tokens, {length} to generate",
                       _slider(current), board_html(current, top), current)
            top = max([v.num_passes for v in current] + [0])
            yield "Done.", _slider(current), board_html(current, top), current

        def on_model(model_name):
            try:  # the length limit follows the chosen model's positions; a refused name changes nothing
                top = backend.max_gen_length(backend.model_max_sequence_length(guard.model(model_name)))
            except ValueError:
                return gr.update()
            return gr.update(maximum=top)

        model_box.change(on_model, model_box, gen_length)
        run.click(on_run, [model_box, prompt, choice_state, chosen, budget, gen_length, seed, *param_widgets],
                  [status, step, board, views_state])

        def on_step(k, vs):
            return board_html(vs, int(k or 0))

        step.input(on_step, [step, views_state], board)
        step.release(on_step, [step, views_state], board)

        def on_play(k, vs):
            top = max([v.num_passes for v in vs] + [0])
            restart = int(k or 0) >= top  # at the end: play from the start again
            return gr.Timer(active=top > 0), (0 if restart else gr.update())

        play.click(on_play, [step, views_state], [timer, step])
        pause.click(lambda: gr.Timer(active=False), None, timer)

        def on_tick(k, vs):
            top = max([v.num_passes for v in vs] + [0])
            k = min(int(k or 0) + 1, top)
            return k, board_html(vs, k), gr.Timer(active=k < top)

        timer.tick(on_tick, [step, views_state], [step, board, timer])
        _wire_saved_runs(cache, guard, model_box, run_dir, task, example, labels, open_btn, status, step, board,
                         views_state)
    return demo


def _wire_saved_runs(cache, guard, model_box, run_dir, task, example, labels, open_btn, status, step, board,
                     views_state):
    """The "Saved run" tab: run directory -> task -> example -> strategies -> stored traces."""

    def rows_of(rd) -> list[dict]:
        try:
            return load_rows(guard.run_dir(rd))
        except (ValueError, FileNotFoundError) as e:
            raise gr.Error(str(e)) from None

    def on_dir(rd):
        if not rd:
            return gr.update(choices=[], value=None)
        tasks = sorted({str(r.get("task")) for r in rows_of(rd)})
        return gr.update(choices=tasks, value=tasks[0] if tasks else None)

    def on_task(rd, t):
        if not rd or not t:
            return gr.update(choices=[], value=None)
        ids = list(dict.fromkeys(str(r.get("example_id")) for r in pick_rows(rows_of(rd), t)))
        return gr.update(choices=ids, value=ids[0] if ids else None)

    def on_example(rd, t, ex):
        if not rd or not t or ex is None:
            return gr.update(choices=[], value=[])
        keys = list(dict.fromkeys(row_label(r) for r in pick_rows(rows_of(rd), t, ex)))
        return gr.update(choices=keys, value=keys)

    def on_open(model_name, rd, t, ex, keys):
        if not rd or not t or ex is None:
            raise gr.Error("pick a run directory, a task and an example first")
        rows = [r for r in pick_rows(rows_of(rd), t, ex) if not keys or row_label(r) in keys]
        try:
            tok = _row_tokenizer(cache, rd, guard.model(model_name), guard)
            vs = backend.saved_views(rd, rows, tok)
        except (ValueError, FileNotFoundError) as e:
            raise gr.Error(str(e)) from None
        top = max([v.num_passes for v in vs] + [0])
        return f"Opened {len(vs)} stored trace(s) of `{ex}` ({t}).", _slider(vs), board_html(vs, top), vs

    run_dir.change(on_dir, run_dir, task)
    task.change(on_task, [run_dir, task], example)
    example.change(on_example, [run_dir, task, example], labels)
    open_btn.click(on_open, [model_box, run_dir, task, example, labels], [status, step, board, views_state])


def _row_tokenizer(cache, run_dir: str, model_name: str, guard: Optional[PathGuard] = None):
    """The tokenizer the run was made with when its config names a loadable (and allowed) one, else the
    selected model's."""
    named = run_model(run_dir)
    if named and guard is not None:
        try:
            guard.model(str(named))
        except ValueError:
            named = None  # an exposed demo opens no model the run's config names elsewhere on the server
    if named:
        try:
            return cache.tokenizer(str(named))
        except FileNotFoundError:
            log.info("run %s names %s, which is not here; using %s", run_dir, named, model_name)
    return cache.tokenizer(model_name)


def start(demo: gr.Blocks, host: str = "127.0.0.1", port: Optional[int] = None, **kw: Any) -> str:
    """Start serving on ``host`` (loopback unless told otherwise) with the demo's CSS and return the local
    URL without blocking. Gradio's share-link hint is silenced (refinery never opens a public tunnel);
    a port that cannot be bound raises a UsageError naming it."""
    from refinery.core.errors import UsageError

    kw.pop("prevent_thread_lock", None)
    try:
        demo.queue().launch(server_name=host, server_port=port, css=CSS, quiet=True, prevent_thread_lock=True,
                            **kw)
    except OSError as e:
        if "port" in str(e).lower():  # Gradio's "Cannot find empty port ..." for a busy --port
            raise UsageError(f"--port {port}: cannot listen on {host}:{port} (in use?)") from None
        raise
    return str(demo.local_url)


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: Optional[int] = None, **kw: Any) -> gr.Blocks:
    """:func:`start`, then block until the server stops (unless ``prevent_thread_lock=True``)."""
    block = not kw.pop("prevent_thread_lock", False)
    start(demo, host, port, **kw)
    if block:
        demo.block_thread()
    return demo
