"""``refinery decode``: task prompts with a verdict, the default preset rule, the compact strategy line,
compressed pass summaries, --quiet and help texts that show defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from refinery.cli import main
from refinery.commands.decode import build_strategy, draw_example, pass_summary, strategy_line

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> Path:
    """The suite's tiny checkpoint (it has the next-token head, so that `edit` runs)."""
    return tiny_checkpoint


def test_pass_summary_compresses_runs_of_identical_passes():
    m1, m2, none = {"unmasked": 1, "remasked": 0}, {"unmasked": 2}, {"replaced": 0}
    passes = [("mask", m2), ("mask", m1), ("mask", m1), ("mask", m1), ("edit", {"replaced": 3, "deleted": 1}),
              ("edit", none), ("edit", none)]
    assert pass_summary(passes) == ["pass 1 [mask] unmasked=2", "passes 2-4 [mask] unmasked=1",
                                    "pass 5 [edit] replaced=3 deleted=1", "passes 6-7 [edit] no change"]
    assert pass_summary([]) == []
    assert pass_summary([("mask", m1)] * 48) == ["passes 1-48 [mask] unmasked=1"]


def test_edit_alone_runs_the_results_table_setting():
    table = yaml.safe_load((REPO / "experiments/ablations/embedded_default.yaml").read_text())
    entry = next(s for s in table["strategies"] if s["label"] == "edit")
    strategy, preset = build_strategy("edit", None, {})
    assert preset == "project"
    assert {k: strategy.config.as_dict()[k] for k in entry["params"]} == entry["params"]
    assert strategy_line(strategy, preset) == \
        "edit (preset project: edit_passes=4 keep_threshold=0.5 revert_margin=0.5 revert_to=best)"
    over, _ = build_strategy("edit", None, {"edit_passes": 2})  # --param overrides the preset's value only
    assert over.config.edit_passes == 2 and over.config.revert_to == "best"
    plain, preset = build_strategy("edit", "none", {})
    assert preset is None and strategy_line(plain, preset) == "edit (config defaults)"
    masked, preset = build_strategy("masked", None, {"remasking": "random"})
    assert strategy_line(masked, preset).endswith(": remasking=random)")


def test_task_examples_come_from_dev_for_generated_tasks():
    choice = draw_example("arith", 3, None, None)
    from refinery.core.tasks import get_task

    assert choice.example == get_task("arith").examples("dev", 4, 0)[3] and choice.label == "arith dev #3"
    assert draw_example("arith", 3, "test", None).example == get_task("arith").examples("test", 4, 0)[3]
    assert choice.task.score(choice.example, choice.example.reference).correct


def test_decode_a_task_prints_prompt_draft_and_verdicts(tiny, capsys):
    code = main(["decode", "--task", "arith", "--example", "1", "--model", str(tiny), "--strategy", "edit",
                 "--budget", "1/2", "--gen-length", "16"])
    out = capsys.readouterr().out
    prompt = draw_example("arith", 1, None, None).example.prompt
    assert code == 0 and out.startswith(f"prompt (arith dev #1):\n{prompt}\n")
    assert "strategy edit (preset project: edit_passes=4 " in out and "NFE " in out
    assert "draft (before the edit passes) [" in out and "\noutput [wrong: " in out  # a random model is wrong
    assert " [edit] " in out


def test_decode_needs_a_prompt_or_a_task(tiny):
    out = subprocess.run([sys.executable, "-m", "refinery", "decode", "--model", str(tiny)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "give a PROMPT or --task" in out.stderr and out.stderr.count("\n") == 1


def test_quiet_prints_the_output_only(tiny):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "refinery", "decode", "--task", "arith", "--model", str(tiny),
            "--strategy", "edit", "--budget", "1/8", "--gen-length", "40"]
    quiet = subprocess.run(args + ["--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    loud = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 0 and loud.returncode == 0
    output = loud.stdout.split("\noutput [", 1)[1].split("\n", 1)[1]
    assert quiet.stdout == output and quiet.stderr == ""  # no loading bar, no log lines


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["decode", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: masked)", "(default: 1/1)", "(default: 48)", "(default: cpu)", "(default: 0)",
                  "default: dev for the generated tasks"):
        assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "Train one stage of the recipe" in capsys.readouterr().out


def test_the_readme_tour_shows_edit_fixing_the_mask_only_draft(capsys):
    """The README's first two commands on the shipped model: masked at 1/8 is wrong, edit fixes it."""
    from refinery.core.checkpoint import EMBEDDED

    if not (EMBEDDED["embedded"] / "config.json").is_file():
        pytest.skip("the shipped embedded checkpoint is not in this checkout")
    readme = (REPO / "README.md").read_text()
    for strategy, verdict in (("masked", "output [wrong: step 2: '4 + 4 = 11'"), ("edit", "output [correct]:")):
        cmd = f"refinery decode --task arith --example 0 --strategy {strategy} --budget 1/8"
        assert cmd in readme
        assert main(cmd.split()[1:]) == 0
        out = capsys.readouterr().out
        assert verdict in out, out
    assert "6 - 2 = 4. 4 + 7 = 11. 11 + 13 = 24\n#### 24" in out
