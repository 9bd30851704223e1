"""Dry run at LLaDA-8B size: random weights in the original layout -> ``refinery convert`` -> ``refinery ablate``.

Writes a random-weight checkpoint with LLaDA-8B's key names (``model.transformer.blocks.N.ff_proj`` ...),
config.json and shard count, one shard at a time (peak host memory: one shard), converts it with
``refinery convert`` (adding a fresh next-token head so the edit entries run too), then runs every strategy
entry of the embedded default ablation at one budget on HumanEval. Reports load time, peak GPU memory,
seconds per problem per strategy entry, and a GPU-hour estimate for a full matrix built from them.

    python tests/benchmarks/dry_run_8b.py --work /scratch/dry8b --data-dir ../shared/data   # one H200
    python tests/benchmarks/dry_run_8b.py --tiny --work /tmp/dry                             # CPU smoke

``--tiny``: the same pipeline at toy size (2 layers, d_model 32, the embedded tokenizer's vocabulary) on the
embedded pycode task, 2 problems, gen_length 48, on CPU; the suite runs it (test_dry_run_8b_tiny).
The random model's outputs are noise: accuracy means nothing here, only time and memory do. Figures
that are computed rather than measured (the GPU-hour table) are labelled as estimates with their formula.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

log = logging.getLogger("dry_run_8b")

# LLaDA-8B-Instruct's config.json (architecture keys; the public checkpoint ships 6 safetensors shards).
LLADA_8B = dict(architectures=["LLaDAModelLM"], model_type="llada", d_model=4096, n_heads=32, n_kv_heads=32,
                n_layers=32, mlp_hidden_size=12288, mlp_ratio=4, vocab_size=126464, embedding_size=126464,
                rope_theta=500000.0, rope=True, max_sequence_length=4096, rms_norm_eps=1e-5, layer_norm_type="rms",
                activation_type="silu", block_type="llama", include_bias=False, include_qkv_bias=False,
                weight_tying=False, alibi=False, mask_token_id=126336, eos_token_id=126081, pad_token_id=126081)
SHARDS_8B = 6
FULL_MATRIX = dict(benchmarks=6, budgets=("1/1", "1/2", "1/4", "1/8"))


def tiny_config(tokenizer) -> dict:
    """The 8B config's keys at toy size, with the embedded tokenizer's vocabulary and special ids."""
    from refinery.core.tokenizer import special_token_ids

    ids = special_token_ids(tokenizer)
    return LLADA_8B | dict(d_model=32, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=64,
                           vocab_size=len(tokenizer), embedding_size=len(tokenizer), mask_token_id=ids.mask_token_id,
                           eos_token_id=ids.eos_token_id, pad_token_id=ids.eos_token_id)


def n_params(cfg: dict) -> int:
    """Parameters of the source checkpoint ``cfg`` describes (embedding, blocks, final norm, output head)."""
    d, m, kv = cfg["d_model"], cfg["mlp_hidden_size"], cfg["d_model"] // cfg["n_heads"] * cfg["n_kv_heads"]
    block = 2 * d * d + 2 * kv * d + 3 * m * d + 2 * d
    return 2 * cfg["embedding_size"] * d + cfg["n_layers"] * block + d


def layer_tensors(cfg: dict, i: int, gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Block ``i`` in LLaDA's original names: random normal(0, 0.02) matrices, unit norms."""
    d, m, kv = cfg["d_model"], cfg["mlp_hidden_size"], cfg["d_model"] // cfg["n_heads"] * cfg["n_kv_heads"]
    shapes = dict(q_proj=(d, d), k_proj=(kv, d), v_proj=(kv, d), attn_out=(d, d), ff_proj=(m, d), up_proj=(m, d),
                  ff_out=(d, m))
    p = f"model.transformer.blocks.{i}."
    out = {p + name + ".weight": _randn(shape, gen, dtype) for name, shape in shapes.items()}
    out.update({p + "attn_norm.weight": torch.ones(d, dtype=dtype), p + "ff_norm.weight": torch.ones(d, dtype=dtype)})
    return out


def _randn(shape, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, device=gen.device) * 0.02).to(dtype).cpu()


def write_source(path: Path, cfg: dict, shards: int, dtype: torch.dtype, seed: int = 0) -> float:
    """Write config.json + ``shards`` safetensors files + index, one shard in memory at a time -> seconds."""
    from safetensors.torch import save_file

    start = time.perf_counter()
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    gen = torch.Generator(device="cuda" if torch.cuda.is_available() else "cpu").manual_seed(seed)
    d, v, n = cfg["d_model"], cfg["embedding_size"], cfg["n_layers"]
    groups = [list(range(n))[k::shards] for k in range(shards)]
    groups = [sorted(g) for g in groups]
    weight_map = {}
    for s, layers in enumerate(groups):
        part = {}
        if s == 0:
            part["model.transformer.wte.weight"] = _randn((v, d), gen, dtype)
        if s == shards - 1:
            part["model.transformer.ln_f.weight"] = torch.ones(d, dtype=dtype)
            part["model.transformer.ff_out.weight"] = _randn((v, d), gen, dtype)
        for i in layers:
            part.update(layer_tensors(cfg, i, gen, dtype))
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        log.info("wrote %s (%d tensors)", name, len(part))
        del part
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return time.perf_counter() - start


def convert(src: Path, dst: Path, delete_token_id: int) -> float:
    """``refinery convert`` in a subprocess (as a user would run it) -> seconds."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "refinery", "convert", str(src), str(dst), "--add-next-token-head", "fresh",
           "--delete-token-id", str(delete_token_id), "--overwrite", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"refinery convert failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    log.info("%s", proc.stdout.strip())
    return time.perf_counter() - start


def ablation_config(model: Path, tokenizer: Path, args) -> dict:
    """Every strategy entry of the embedded default ablation at one budget, on the dry run's task."""
    import yaml

    base = yaml.safe_load((REPO / "experiments" / "ablations" / "embedded_default.yaml").read_text())
    task = dict(name=args.task, split="test", n=args.problems, seed=0)
    if args.data_dir:
        task["kwargs"] = {"data_dir": str(Path(args.data_dir).resolve())}
    strategies = base["strategies"] + (cached_entries(base["strategies"]) if args.cache else [])
    return dict(name="dry_run_8b", model=str(model), tokenizer=str(tokenizer), tasks=[task],
                strategies=strategies, budgets=[args.budget], gen_length=args.gen_length,
                batch_size=args.batch_size, seeds=[0], device=args.device, dtype=args.dtype, score_workers=4,
                save_traces=False)


def best_cache(entry: dict) -> str | None:
    """The most reusing KV-cache mode the entry's strategy accepts (dual, else prefix), or None."""
    from refinery.strategies import get_strategy

    strategy = get_strategy(entry["name"], **entry.get("params", {}))
    return next((m for m in ("dual", "prefix") if strategy.refuse_cache(m) is None), None)


def cached_entries(entries: list[dict]) -> list[dict]:
    """A copy of every entry that can decode with a KV cache, labelled ``LABEL+MODE``, in its best mode."""
    out = []
    for entry in entries:
        mode = None if "sweep" in entry else best_cache(entry)
        if mode is not None:
            out.append(entry | {"label": f"{entry['label']}+{mode}", "cache": mode})
    return out


def run_ablation_timed(config_path: Path, out: Path) -> dict:
    """Load time, then the ablation (in this process, so CUDA's peak memory counter sees it) -> figures."""
    from refinery.experiments.config import load_config
    from refinery.experiments.runner import load_model_for, run_ablation
    from refinery.experiments.store import load_rows

    config = load_config(config_path)
    cuda = torch.cuda.is_available() and config.device.startswith("cuda")
    start = time.perf_counter()
    model, _ = load_model_for(config)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    peak_load = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    log.info("load: %.1f s; GPU memory after load %s", load_s, "n/a" if peak_load is None else f"{peak_load:.1f} GiB")
    del model
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    shutil.rmtree(out, ignore_errors=True)  # a rerun measures again instead of skipping stored cells
    start = time.perf_counter()
    run_dir = run_ablation(config, out, progress=False)
    ablate_s = time.perf_counter() - start
    per_entry: dict[str, list[float]] = defaultdict(list)
    for row in load_rows(run_dir):
        per_entry[row["label"]].append(float(row["wall_seconds"]))
    return dict(load_seconds=load_s, ablate_seconds=ablate_s,
                peak_gpu_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                seconds_per_problem={k: sum(v) / len(v) for k, v in per_entry.items()},
                problems={k: len(v) for k, v in per_entry.items()})


def gpu_hours(sec_per_problem: dict[str, float], budget: str, problems_per_benchmark: int, gpus: int) -> float:
    """ESTIMATE: hours for the full matrix from the measured seconds per problem at ``budget``.

    hours = sum over entries e and budgets b of  t_e(budget) * (b / budget) * benchmarks * problems / gpus / 3600,
    i.e. time scales with the number of forward passes (the budget) and ranks split cells evenly."""
    scale = sum(float(Fraction(b)) for b in FULL_MATRIX["budgets"]) / float(Fraction(budget))
    total = sum(sec_per_problem.values()) * scale * FULL_MATRIX["benchmarks"] * problems_per_benchmark
    return total / gpus / 3600


def report(fig: dict, args) -> str:
    """The figures as markdown: measured ones, then the labelled GPU-hour estimate."""
    peak = "n/a (CPU)" if fig["peak_gpu_gib"] is None else f"{fig['peak_gpu_gib']:.1f} GiB"
    lines = [f"dry run: {args.task} x {args.problems} problems, gen_length {args.gen_length}, budget {args.budget}, "
             f"{'tiny' if args.tiny else 'LLaDA-8B'} random weights, {args.device} {args.dtype}", "",
             f"- write source: {fig['write_seconds']:.1f} s; convert: {fig['convert_seconds']:.1f} s; "
             f"load: {fig['load_seconds']:.1f} s (measured)",
             f"- peak GPU memory: {peak} (measured)", "","| entry | s / problem (measured) |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in fig["seconds_per_problem"].items()]
    n = args.problems_per_benchmark
    plain = {k: v for k, v in fig["seconds_per_problem"].items() if "+" not in k}
    best = {k: min([v] + [w for c, w in fig["seconds_per_problem"].items() if c.split("+")[0] == k])
            for k, v in plain.items()}
    for name, entries in (("uncached", plain), ("each entry at its fastest cache mode", best)):
        lines += ["", f"GPU-hours for the full matrix, {name}, ESTIMATE ({FULL_MATRIX['benchmarks']} benchmarks x {n} "
                  f"problems x budgets {', '.join(FULL_MATRIX['budgets'])} x {len(entries)} entries; "
                  f"s/problem scaled by budget / {args.budget}): "
                  f"1 GPU {gpu_hours(entries, args.budget, n, 1):.1f} h, "
                  f"8 GPUs {gpu_hours(entries, args.budget, n, 8):.1f} h"]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="directory for the source, converted checkpoint and run")
    p.add_argument("--tiny", action="store_true", help="toy size on CPU (the suite's smoke test)")
    p.add_argument("--task", default=None, help="task (default humaneval; --tiny: pycode)")
    p.add_argument("--data-dir", default=None, help="benchmark data directory (e.g. ../shared/data)")
    p.add_argument("--problems", type=int, default=None, help="problems (default 32; --tiny: 2)")
    p.add_argument("--gen-length", type=int, default=None, help="generated tokens (default 512; --tiny: 48)")
    p.add_argument("--budget", default="1/8")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="default cuda (--tiny: cpu)")
    p.add_argument("--dtype", default=None, help="default bf16 (--tiny: fp32)")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="also run every cache-capable entry with its best KV-cache mode (label+mode)")
    p.add_argument("--problems-per-benchmark", type=int, default=500,
                   help="problems per benchmark assumed by the GPU-hour estimate")
    args = p.parse_args(argv)
    tiny = dict(task="pycode", problems=2, gen_length=48, device="cpu", dtype="fp32")
    full = dict(task="humaneval", problems=32, gen_length=512, device="cuda", dtype="bf16")
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> dict:
    import yaml

    from refinery.core.checkpoint import resolve_model_path
    from refinery.core.tokenizer import load_tokenizer, special_token_ids

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    work = Path(args.work)
    tok_dir = resolve_model_path("embedded")  # prompts need a tokenizer; random weights need no real one
    tokenizer = load_tokenizer(tok_dir)
    cfg = tiny_config(tokenizer) if args.tiny else LLADA_8B
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    fig = dict(write_seconds=write_source(work / "source", cfg, 2 if args.tiny else SHARDS_8B, dtype))
    log.info("write source: %.1f s", fig["write_seconds"])
    fig["convert_seconds"] = convert(work / "source", work / "converted", special_token_ids(tokenizer).delete_token_id)
    log.info("convert: %.1f s", fig["convert_seconds"])
    config_path = work / "ablate.yaml"
    config_path.write_text(yaml.safe_dump(ablation_config(work / "converted", tok_dir, args), sort_keys=False))
    fig |= run_ablation_timed(config_path, work / "run")
    text = report(fig, args)
    (work / "dry_run.json").write_text(json.dumps(fig, indent=1))
    (work / "dry_run.md").write_text(text + "\n")
    print(text)
    return fig


if __name__ == "__main__":
    main()
