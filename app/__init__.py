"""The Gradio edit-trace demo. ``app.render`` (pure HTML/diff rendering of traces), ``app.backend`` (cached
models, prompts, streamed generation), ``app.runs`` (saved ablation runs), ``app.demo`` (the Blocks)."""
