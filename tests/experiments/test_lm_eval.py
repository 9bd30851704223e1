"""The lm-evaluation-harness adapter: the Monte Carlo likelihood, model args, and an offline task whose score
matches ``refinery ablate`` on the same problems."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("lm_eval")

from refinery.cli import main  # noqa: E402
from refinery.lm_eval_model import RefineryLM, mc_loglikelihood  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "experiments" / "lm_eval_tasks"
EDIT = dict(edit_passes=4, keep_threshold=0.5, revert_margin=0.5, revert_to="best")


def test_task_jsonl_is_the_embedded_arith_dev_split():
    from refinery.core.tasks import get_task

    docs = [json.loads(line) for line in (TASKS / "arith_dev.jsonl").read_text().splitlines()]
    examples = get_task("arith").examples("dev", len(docs), 0)
    assert [(d["id"], d["prompt"], d["reference"]) for d in docs] == [(e.id, e.prompt, e.reference) for e in examples]


def test_one_token_likelihood_is_exact_and_the_estimate_is_seeded(tiny_checkpoint):
    from refinery.core.checkpoint import load_model

    model = load_model(tiny_checkpoint, "cpu", torch.float32).eval()
    ctx, cont = [5, 6, 7, 8], [9]
    # one continuation token: every sample masks exactly it, weight l/k = 1: the exact log-probability
    seq = torch.tensor([ctx + [model.config.mask_token_id]])
    exact = torch.log_softmax(model(seq).logits[0, -1].float(), -1)[9].item()
    assert mc_loglikelihood(model, ctx, cont, mc_num=8, mc_batch=4) == pytest.approx(exact, abs=1e-5)
    long = [9, 10, 11, 12, 13, 14]
    a, b = (mc_loglikelihood(model, ctx, long, mc_num=16, mc_batch=8, seed=s) for s in (0, 0))
    assert a == b and a < 0 and mc_loglikelihood(model, ctx, long, mc_num=16, mc_batch=8, seed=1) != a


def test_model_args_keep_budgets_as_text(tiny_checkpoint):
    lm = RefineryLM.create_from_arg_obj(
        {"pretrained": str(tiny_checkpoint), "strategy": "edit", "budget": "1/8", "gen_length": "16",
         "edit_passes": "2"}, {"device": "cpu", "batch_size": 4, "max_batch_size": 64})
    assert (lm.budget, lm.gen_length, lm.batch_size_, lm.strategy.config.edit_passes) == ("1/8", 16, 4, 2)
    if not torch.cuda.is_available():  # lm-eval's default --device cuda:0 falls back to the CPU here
        lm = RefineryLM.create_from_arg_obj({"pretrained": str(tiny_checkpoint)}, {"device": "cuda:0"})
        assert lm.device == torch.device("cpu")
    with pytest.raises(ValueError, match="gen_length"):
        RefineryLM.create_from_arg_string(f"pretrained={tiny_checkpoint},gen_length=long")


def test_lm_eval_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["lm-eval", "--help"])
    assert exit_.value.code == 0 and "--model_args pretrained=DIR" in capsys.readouterr().out


def _env() -> dict:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return env


def _lm_eval(out: Path, nproc: int = 1) -> tuple[float, dict[str, str]]:
    """Run the offline task -> (accuracy, example id -> generated text)."""
    model_args = ",".join(["pretrained=embedded", "strategy=edit", "budget=1/4", "gen_length=48", "device=cpu",
                           "batch_size=16", *(f"{k}={v}" for k, v in EDIT.items())])
    launch = [sys.executable, "-m", "refinery"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", "refinery"]
    proc = subprocess.run(
        launch + ["lm-eval", "--model_args", model_args, "--tasks", "refinery_arith_dev", "--include_path", str(TASKS),
                  "--output_path", str(out), "--log_samples"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob("samples_*.jsonl")).read_text().splitlines()]
    return results["results"]["refinery_arith_dev"]["acc,none"], {s["doc"]["id"]: s["resps"][0][0] for s in samples}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return _lm_eval(tmp_path_factory.mktemp("lm_eval"))


def test_offline_task_scores_what_ablate_scores(one_process, tmp_path):
    acc, outputs = one_process
    config = dict(name="lm_eval_check", model="embedded", tasks=[dict(name="arith", n=4, split="dev", seed=0)],
                  strategies=[dict(name="edit", label="edit", params=EDIT)], budgets=["1/4"], gen_length=48,
                  batch_size=16, seeds=[0], device="cpu", dtype="fp32", save_traces=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "refinery", "ablate", str(tmp_path / "c.yaml"), "--out",
                           str(tmp_path / "run"), "--no-progress"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == len(outputs) == 4
    assert {r["example_id"]: r["output"] for r in rows} == outputs  # same strategy, budget, seed: same text
    assert acc == pytest.approx(sum(r["correct"] for r in rows) / len(rows))


def test_two_processes_split_the_requests_and_agree(one_process, tmp_path):
    acc, outputs = _lm_eval(tmp_path / "lm", nproc=2)  # lm-eval's way: each rank a share, gathered on rank 0
    assert (acc, outputs) == one_process
