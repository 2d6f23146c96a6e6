"""The study's statistics, tables and pictures on constructed inputs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rnet_hub.study.grid import Cell
from rnet_hub.study.plots import curve_pictures, fraction_pictures
from rnet_hub.study.results import area_first, best_epoch, cells_table, final_table, summary_table
from rnet_hub.study.stats import compare_inits, min_wilcoxon_p, paired_test, verdict


def test_a_constant_shift_is_significant_by_both_tests() -> None:
    base = np.array([0.61, 0.55, 0.70, 0.66, 0.58, 0.64, 0.59, 0.68])
    result = paired_test(base + 0.05, base)
    assert result.n == 8
    assert result.mean_diff == pytest.approx(0.05, abs=1e-12)
    assert result.t_p == 0.0 and result.cohens_dz == math.inf  # sd of the differences is 0 (up to rounding)
    assert result.w_p == pytest.approx(2 / 2**8)  # exact test: all 8 differences positive
    assert result.rank_biserial == 1.0
    text = verdict(result, "radiologynet", "scratch", alpha=0.05, greater=True, measure="test_f1_weighted")
    assert text == ("radiologynet better than scratch (higher test_f1_weighted) at alpha=0.05 by paired t-test "
                    "and Wilcoxon")


def test_identical_samples_are_no_difference_said_as_such() -> None:
    same = [0.7, 0.8, 0.75, 0.9, 0.6]
    result = paired_test(same, same)
    assert (result.t_p, result.w_p, result.cohens_dz, result.rank_biserial) == (1.0, 1.0, 0.0, 0.0)
    assert verdict(result, "a", "b", alpha=0.05, greater=True, measure="m") == (
        "no significant difference at alpha=0.05; Wilcoxon cannot reach p<0.05 with n=5")


def test_noisy_samples_match_scipy_and_hand_computed_effect_sizes() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.7, 0.05, 7), rng.normal(0.68, 0.05, 7)
    result = paired_test(a, b)
    d = a - b
    assert result.t_p == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert result.t_statistic == pytest.approx(stats.ttest_rel(a, b).statistic, rel=1e-12)
    assert result.w_p == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
    assert result.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-12)
    ranks = stats.rankdata(np.abs(d))
    r_plus, r_minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    assert result.rank_biserial == pytest.approx((r_plus - r_minus) / (r_plus + r_minus), rel=1e-12)


def test_lower_is_better_metrics_name_the_lower_one_better_and_small_n_is_explained() -> None:
    mae_a, mae_b = [10.0, 11.0, 12.0], [12.0, 13.5, 14.0]  # a has the lower error by 2, 2.5, 2
    result = paired_test(mae_a, mae_b)
    assert result.t_p == pytest.approx(stats.ttest_rel(mae_a, mae_b).pvalue)
    assert result.t_p < 0.05 and result.w_p == pytest.approx(0.25)
    assert verdict(result, "imagenet", "scratch", alpha=0.05, greater=False, measure="test_mae") == (
        "imagenet better than scratch (lower test_mae) at alpha=0.05 by paired t-test")
    assert min_wilcoxon_p(5) == 0.0625 and min_wilcoxon_p(6) == 0.03125
    assert verdict(paired_test([1.0], [0.0]), "a", "b", alpha=0.05, greater=True, measure="m") == (
        "too few paired runs to test (n=1)")


def _made_up(runs: int = 3, epochs: int = 3) -> list[tuple[Cell, dict]]:
    """Two inits x two fractions x ``runs``: f1 = 0.5 + shift(init) + 0.1 * fraction + 0.02 * run + 0.03 * epoch."""
    done = []
    for fraction in (0.5, 1.0):
        for run in range(runs):
            for init, shift in (("radiologynet", 0.05), ("scratch", 0.0)):
                cell = Cell("m", init, fraction, 1e-3, run, 1221 + run, "m")
                value = 0.5 + shift + 0.1 * fraction + 0.02 * run
                done.append((cell, {"epochs": [{"epoch": e, "f1": value + 0.03 * e, "loss": 1 - value}
                                               for e in range(1, epochs + 1)],
                                    "test": {"f1": value}, "wall_s": 1.5, "train_size": 10}))
    return done


def test_tables_and_pictures_carry_the_known_numbers() -> None:
    done = _made_up()
    cells = cells_table(done)
    assert len(cells) == 2 * 2 * 3 * 3 and list(cells.columns[:7]) == ["model", "init", "fraction", "lr", "run",
                                                                       "seed", "epoch"]
    final = final_table(done, metric="f1", greater=True, first=3)
    assert (final["best_epoch"] == 3).all()  # the curve rises
    row = final[(final.init == "radiologynet") & (final.fraction == 0.5) & (final.run == 2)].iloc[0]
    value = 0.5 + 0.05 + 0.05 + 0.04
    assert row["auc_first3_f1"] == pytest.approx(value + 0.06)  # mean height of value + 0.03 * (1, 2, 3)
    assert row["best_f1"] == pytest.approx(value + 0.09) and row["test_f1"] == pytest.approx(value)
    summary = summary_table(cells, final, first=3)
    at = summary.set_index(["init", "fraction", "at", "metric"])
    runs = [0.5 + 0.05 + 0.05 + 0.02 * r + 0.06 for r in range(3)]  # epoch 2 of radiologynet at 0.5
    assert at.loc[("radiologynet", 0.5, "2", "f1"), "mean"] == pytest.approx(np.mean(runs))
    assert at.loc[("radiologynet", 0.5, "2", "f1"), "std"] == pytest.approx(np.std(runs, ddof=1))
    assert at.loc[("scratch", 1.0, "test", "f1"), "n"] == 3
    assert set(summary["at"]) == {"1", "2", "3", "best", "test", "auc_first3"}
    comparisons = compare_inits(final, [("test_f1", True), ("auc_first3_f1", True)])
    assert len(comparisons) == 4 and (comparisons["n"] == 3).all()
    assert (comparisons["mean_diff"].round(9) == 0.05).all() and (comparisons["t_p"] == 0).all()
    assert comparisons["verdict"].str.startswith("radiologynet better than scratch").all()
    (curves,) = curve_pictures(cells, metric="f1", first=2)
    line = curves.panel("fraction 0.5").line("scratch")
    assert line.x == (1.0, 2.0) and line.n == (3, 3)
    assert line.mean == pytest.approx([0.5 + 0.05 + 0.02 + 0.03 * e for e in (1, 2)])
    assert line.std == pytest.approx([np.std([0.02 * r for r in range(3)], ddof=1)] * 2)
    (by_fraction,) = fraction_pictures(final, measures=[("test_f1", "test f1")])
    line = by_fraction.panel("test f1").line("radiologynet")
    assert line.x == (0.5, 1.0) and line.mean == pytest.approx([0.62, 0.67])


def test_best_epoch_and_curve_area_follow_the_metric_direction() -> None:
    epochs = [{"epoch": 1, "mae": 5.0}, {"epoch": 2, "mae": 3.0}, {"epoch": 3, "mae": 3.0}, {"epoch": 4, "mae": 4.0}]
    assert best_epoch(epochs, "mae", greater=False) == 2  # the earliest of equals
    assert best_epoch(epochs, "mae", greater=True) == 1
    assert area_first(epochs, "mae", 3) == pytest.approx(((5 + 3) / 2 + (3 + 3) / 2) / 2)
    assert area_first(epochs, "mae", 1) == 5.0
    assert math.isnan(area_first(epochs, "mae", 5))  # epoch 5 is missing
    assert best_epoch([{"epoch": 1, "mae": None}], "mae", greater=False) is None


def test_comparisons_pair_only_runs_both_inits_finished() -> None:
    done = [(c, o) for c, o in _made_up() if not (c.init == "scratch" and c.run == 0)]
    final = final_table(done, metric="f1", greater=True, first=3)
    comparisons = compare_inits(final, [("test_f1", True)])
    assert (comparisons["n"] == 2).all()
    assert isinstance(comparisons, pd.DataFrame) and list(comparisons["fraction"]) == [0.5, 1.0]
