"""Launch settings of the fused argmax/probability kernel on the GPU at hand (CUDA only).

    PYTHONPATH=. python tests/benchmarks/kernel_tune.py

Times every (BLOCK, num_warps, num_stages, accumulator) on the logits of a batch-32, 512-token pass
(32 x 512 x 126464 bf16, 4.1 GB), reports GB/s against the read floor, and checks each setting's
probabilities against float64 torch on a slice. The winner goes into ``strategies.kernels.LAUNCH``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch
import triton.language as tl

from refinery.strategies.kernels import argmax_probability


def time_ms(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--best-out", default=None, help="write the fastest float64-accumulating setting as JSON")
    args = ap.parse_args()
    torch.manual_seed(0)
    big = (torch.randn(32, 512, 126464, device="cuda") * 3).to(torch.bfloat16)
    small = big[:2, :64]
    ref = torch.softmax(small.double(), -1).max(-1).values
    gb = big.numel() * 2 / 1e9
    print(f"{torch.cuda.get_device_name()}: {gb:.2f} GB of logits")
    rows = []
    for block, warps, stages, acc in itertools.product((2048, 4096, 8192), (4, 8, 16), (1, 3),
                                                        (tl.float64, tl.float32)):
        launch = dict(BLOCK=block, num_warps=warps, num_stages=stages, ACC=acc)
        try:
            idx, prob = argmax_probability(small, launch=launch)
            err = float(((prob - ref).abs() / ref).max())
            ms = time_ms(lambda: argmax_probability(big, launch=launch))
        except Exception as exc:  # a setting the compiler refuses (registers, shared memory)
            print(f"{launch}: failed ({type(exc).__name__})")
            continue
        rows.append((ms, block, warps, stages, str(acc), err))
        print(f"BLOCK={block:5d} warps={warps:2d} stages={stages} acc={acc}: {ms:6.2f} ms  {gb / ms * 1e3:6.0f} GB/s  "
              f"max rel err {err:.1e}", flush=True)
    rows.sort()
    print("best:", rows[:5])
    best = next(r for r in rows if r[4] == str(tl.float64))
    if args.best_out:
        with open(args.best_out, "w") as f:
            json.dump(dict(BLOCK=best[1], num_warps=best[2], num_stages=best[3]), f)


if __name__ == "__main__":
    main()
