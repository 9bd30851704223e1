"""``refinery app``: the Gradio edit-trace demo (binds 127.0.0.1 unless --host says otherwise)."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("app", help="browser demo: watch strategies decode pass by pass, or open saved traces")
    p.add_argument("--model", default="embedded", help="checkpoint directory or shipped name (default: embedded)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default: loopback only; any other host prints a warning and limits "
                        "the path fields to the shipped models, --model, --runs-dir and --data-dir)")
    p.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--runs-dir", default=None, help="directory searched for saved ablation runs (rows.jsonl)")
    p.add_argument("--data-dir", default=None, help="benchmark data directory (gsm8k/, humaneval/, ...)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32 / bf16 / fp16 (default: fp32 on a CPU, as stored on a GPU)")
    p.set_defaults(run=run)


def check_port_free(host: str, port: int) -> None:
    """Refuse a --port something already listens on, before anything is built (Gradio would traceback)."""
    import socket

    from refinery.core.errors import UsageError

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise UsageError(f"--host {host}: cannot resolve ({e.strerror or e})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        try:
            s.bind(addr)
        except OSError as e:
            raise UsageError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e}); "
                             "pick another port or leave --port out") from None


def run(args) -> int:
    from pathlib import Path

    from refinery.core.checkpoint import check_checkpoint, check_device, parse_dtype

    if args.port is not None and not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not a TCP port")
    if args.runs_dir and not Path(args.runs_dir).is_dir():
        raise FileNotFoundError(f"{args.runs_dir}: --runs-dir is not a directory")
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"{args.data_dir}: --data-dir is not a directory")
    check_device(args.device)
    check_checkpoint(args.model)
    dtype = parse_dtype(args.dtype)
    if args.port is not None:
        check_port_free(args.host, args.port)

    from refinery.app.demo import build_demo, start
    from refinery.app.guard import PathGuard, exposure_warning, is_loopback

    exposed = not is_loopback(args.host)
    if exposed:
        print(exposure_warning(args.host), file=sys.stderr)
    guard = PathGuard(restricted=exposed, models=[args.model], runs_root=args.runs_dir, data_root=args.data_dir)
    demo = build_demo(model=args.model, runs_dir=args.runs_dir, data_dir=args.data_dir, device=args.device,
                      dtype=dtype, guard=guard)
    url = start(demo, host=args.host, port=args.port)
    print(f"refinery app: serving on {url} (bound to {args.host}); model {args.model} loads on the first Run")
    demo.block_thread()
    return 0
