"""Tables: counts, Wilson intervals, answer-only accuracy, gains over the baseline, NFE, speed."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from refinery.analysis.load import load_runs
from refinery.analysis.tables import accuracy_table, find_baseline, gain_table, main_table, main_table_markdown, \
    mcnemar_exact, refinement_table, wilson_interval

from analysis_helpers import CORRECT, make_run


def test_wilson_interval_textbook_values():
    # 5/10 at 95%: (0.2366, 0.7634) (Wilson 1927; e.g. Newcombe 1998, Table I).
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    # k = 0 has the closed form (0, z^2 / (n + z^2)); k = n mirrors it.
    z2 = 1.959963984540054 ** 2
    assert wilson_interval(0, 20) == (0.0, pytest.approx(z2 / (20 + z2)))
    assert wilson_interval(20, 20) == (pytest.approx(1 - z2 / (20 + z2)), 1.0)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    for n in (1, 7, 135, 256, 1000):  # rounding must never put p outside its interval (1 - 1e-16 < 256/256)
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_accuracy_table_counts(run_dir):
    acc = accuracy_table(load_runs([run_dir])).set_index(["entry", "budget"])
    for (entry, _, budget), flags in CORRECT.items():
        row = acc.loc[(entry, budget)]
        assert row["n"] == 4 and row["acc"] == sum(flags) / 4
        lo, hi = wilson_interval(sum(flags), 4)
        assert (row["ci_lo"], row["ci_hi"]) == (lo, hi)
        # example 3 is answer-correct in every entry, the others as strict
        assert row["answer_acc"] == (sum(flags[:3]) + 1) / 4
        max_nfe = {"1/1": 16, "1/4": 4}[budget]
        assert row["nfe_mean"] == max_nfe - 0.5 and row["max_nfe"] == max_nfe
        assert row["tokens_per_s"] == pytest.approx(40 / (4 * 0.5 * max_nfe / 16))


def test_baseline_is_plain_masked_low_confidence_and_gains_are_points(run_dir):
    df = load_runs([run_dir])
    assert find_baseline(df) == "masked"
    gains = gain_table(df).set_index(["entry", "budget"])
    assert gains.loc[("edit", "1/1"), "gain"] == pytest.approx(25.0)  # 4/4 vs 3/4
    assert gains.loc[("edit", "1/4"), "gain"] == pytest.approx(25.0)  # 2/4 vs 1/4
    assert gains.loc[("masked-semiar", "1/4"), "gain"] == pytest.approx(-25.0)
    assert "masked" not in gains.index.get_level_values("entry")
    other = gain_table(df, baseline="edit").set_index(["entry", "budget"])
    assert other.loc[("masked", "1/1"), "gain"] == pytest.approx(-25.0)
    with pytest.raises(ValueError, match="not an entry"):
        find_baseline(df, "nope")


def test_gains_are_paired_by_problem(run_dir):
    gains = gain_table(load_runs([run_dir])).set_index(["entry", "budget"])
    # masked 1/1 solves e0-e2; semi-AR e0-e1 (one loss); edit e0-e3 (one win); at 1/4 edit adds e1
    assert gains.loc[("masked-semiar", "1/1"), ["wins", "losses", "paired"]].tolist() == [0, 1, 4]
    assert gains.loc[("edit", "1/1"), ["wins", "losses"]].tolist() == [1, 0]
    assert gains.loc[("edit", "1/4"), ["wins", "losses"]].tolist() == [1, 0]
    assert gains.loc[("masked-semiar", "1/4"), ["wins", "losses"]].tolist() == [0, 1]
    assert gains.loc[("edit", "1/1"), "p_value"] == 1.0


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(1, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # all six discordant pairs one way
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024) and mcnemar_exact(3, 7) == mcnemar_exact(7, 3)
    assert mcnemar_exact(3, 7) == pytest.approx(2 * (1 + 10 + 45 + 120) / 1024)  # 0.34375


def test_main_table_orders_budgets_from_most_passes(run_dir):
    table = main_table(load_runs([run_dir]))
    assert list(table.columns) == ["1/1", "1/4"]
    assert table.loc[("arith", "edit"), "1/4"] == pytest.approx(50.0)
    text = main_table_markdown(load_runs([run_dir]))
    assert "| strategy | 1/1 | 1/4 |" in text and "| edit | 100.0 | 50.0 |" in text


def test_several_runs_keep_entries_apart(tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    df = load_runs([a, b])
    assert len(df) == 2 * sum(len(f) for f in CORRECT.values())
    assert {"a/masked", "b/masked", "a/edit"} <= set(df["entry"])
    assert accuracy_table(df)["n"].eq(4).all()


def test_refinement_table_counts_fixed_and_broken_drafts(run_dir):
    table = refinement_table(load_runs([run_dir])).set_index(["entry", "budget"])
    assert list(table.index) == [("edit", "1/1"), ("edit", "1/4")]  # only rows with a scored draft
    # 1/1: drafts 1,0,1,1 -> final 1,1,1,1; 1/4: drafts 1,0,1,0 -> final 1,1,0,0
    assert table.loc[("edit", "1/1"), ["fixed", "broken"]].tolist() == [1, 0]
    assert table.loc[("edit", "1/4"), ["fixed", "broken"]].tolist() == [1, 1]
    assert table.loc[("edit", "1/4"), "draft_acc"] == 0.5 and table.loc[("edit", "1/1"), "acc"] == 1.0
    old = load_runs([run_dir]).drop(columns=["draft_correct"])  # runs from before drafts were scored
    assert refinement_table(old).empty


def test_baseline_counts_every_config_field_not_a_fixed_list(tmp_path):
    """An option added to MaskedConfig (here bans and logits_eos_inf, which the old hand-written list of
    four names did not know) makes an entry less plain: the defaults win although listed later."""
    from refinery.analysis.tables import non_default_settings

    assert non_default_settings("masked", {}) == 0
    assert non_default_settings("masked", {"remasking": "low_confidence", "block_length": None}) == 0
    assert non_default_settings("masked", {"bans": "none", "logits_eos_inf": True}) == 2
    assert non_default_settings("masked", {"remasking": "random"}) == 1
    rows = [dict(entry=e, strategy="masked", params=p) for e, p in
            [("paper", {"bans": "none", "logits_eos_inf": True}), ("random", {"remasking": "random"}),
             ("plain", {"remasking": "low_confidence"})]]
    assert find_baseline(pd.DataFrame(rows)) == "plain"
    assert find_baseline(pd.DataFrame(rows[:2])) == "random"
    with pytest.raises(ValueError, match="no masked entry"):
        find_baseline(pd.DataFrame([dict(entry="edit", strategy="edit", params={})]))
