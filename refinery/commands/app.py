"""``refinery app``: the Gradio edit-trace demo (binds 127.0.0.1 unless --host says otherwise)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("app", help="browser demo: watch strategies decode pass by pass, or open saved traces")
    p.add_argument("--model", default="embedded", help="checkpoint directory or shipped name (default: embedded)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--runs-dir", default=None, help="directory searched for saved ablation runs (rows.jsonl)")
    p.add_argument("--data-dir", default=None, help="benchmark data directory (gsm8k/, humaneval/, ...)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32 / bf16 / fp16 (default: fp32 on a CPU, as stored on a GPU)")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from app.demo import build_demo, launch
    from core.checkpoint import parse_dtype

    if args.port is not None and not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not a TCP port")
    if args.runs_dir and not Path(args.runs_dir).is_dir():
        raise FileNotFoundError(f"{args.runs_dir}: --runs-dir is not a directory")
    demo = build_demo(model=args.model, runs_dir=args.runs_dir, data_dir=args.data_dir, device=args.device,
                      dtype=parse_dtype(args.dtype))
    print(f"refinery app: binding {args.host}; model {args.model} loads on the first Run")
    launch(demo, host=args.host, port=args.port)
    return 0
