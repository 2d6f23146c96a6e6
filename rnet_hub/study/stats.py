"""Paired comparisons between initialisations, over the runs of a study (scipy).

For each model x fraction x learning rate and each pair of inits, the runs are paired by their index
(run r of both inits saw the same data in the same order) and two tests are made on the differences
``a - b`` (:func:`paired_test`):

* the paired t-test (``scipy.stats.ttest_rel``), with Cohen's d_z = mean(d) / sd(d) as its effect size;
* the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped), with the matched-pairs
  rank-biserial correlation r = (R+ - R-) / (R+ + R-) as its effect size.

Both are two-sided. The verdict says "no significant difference at alpha=..." as such when neither test
has p < alpha. With n runs the Wilcoxon test cannot go below p = 2 / 2**n (0.0625 for n = 5): it cannot
find a difference at 0.05 with five runs or fewer, whatever the data. The p-values are not corrected for
the number of comparisons.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PairedResult", "compare_inits", "min_wilcoxon_p", "paired_test", "verdict"]


@dataclass(frozen=True)
class PairedResult:
    """The two paired tests of ``a`` against ``b`` (see the module docstring). ``nan`` where undefined."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    t_statistic: float
    t_p: float
    cohens_dz: float
    w_statistic: float
    w_p: float
    rank_biserial: float


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with ``n`` pairs."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedResult:
    """Paired t-test and Wilcoxon signed-rank test of ``a`` against ``b`` (same length, paired by position).

    Identical samples give p = 1 and effect 0; a constant non-zero difference (up to rounding) gives the
    t-test p = 0 and d_z = ±inf (scipy would divide by zero); fewer than two pairs give ``nan`` statistics.
    """
    import numpy as np
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples need the same length, got {x.shape} and {y.shape}")
    d = x - y
    n = len(d)
    nan = math.nan
    mean_a, mean_b = (float(x.mean()), float(y.mean())) if n else (nan, nan)
    mean_d = float(d.mean()) if n else nan
    if n < 2:
        return PairedResult(n, mean_a, mean_b, mean_d, nan, nan, nan, nan, nan, nan)
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean_d)):  # a constant difference (up to rounding)
        t, t_p = (nan, 1.0) if mean_d == 0 else (math.copysign(math.inf, mean_d), 0.0)
        dz = 0.0 if mean_d == 0 else math.copysign(math.inf, mean_d)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # precision warnings for nearly equal samples
            result = stats.ttest_rel(x, y)
        t, t_p, dz = float(result.statistic), float(result.pvalue), mean_d / sd
    nonzero = d[d != 0]
    if len(nonzero) == 0:
        w, w_p, rb = nan, 1.0, 0.0
    else:
        ranks = stats.rankdata(np.abs(nonzero))
        r_plus, r_minus = float(ranks[nonzero > 0].sum()), float(ranks[nonzero < 0].sum())
        rb = (r_plus - r_minus) / (r_plus + r_minus)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sample size too small for normal approximation" and ties
            result = stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
        w, w_p = float(result.statistic), float(result.pvalue)
    return PairedResult(n, mean_a, mean_b, mean_d, t, t_p, dz, w, w_p, rb)


def verdict(result: PairedResult, a: str, b: str, *, alpha: float, greater: bool, measure: str) -> str:
    """One sentence: "no significant difference at alpha=0.05", or which init is better and by which test."""
    if result.n < 2:
        return f"too few paired runs to test (n={result.n})"
    by = [name for name, p in (("paired t-test", result.t_p), ("Wilcoxon", result.w_p)) if p < alpha]
    if not by:
        note = (f"; Wilcoxon cannot reach p<{alpha:g} with n={result.n}"
                if min_wilcoxon_p(result.n) >= alpha else "")
        return f"no significant difference at alpha={alpha:g}{note}"
    better, worse = (a, b) if (result.mean_diff > 0) == greater else (b, a)
    direction = "higher" if greater else "lower"  # the better init's measure is higher exactly when higher is better
    return f"{better} better than {worse} ({direction} {measure}) at alpha={alpha:g} by {' and '.join(by)}"


def compare_inits(final: pd.DataFrame, measures: Sequence[tuple[str, bool]], *, alpha: float = 0.05) -> pd.DataFrame:
    """The comparisons table: for each model x fraction x lr, each pair of inits (in the order they appear)
    and each ``(column of final, higher is better)`` in ``measures``, the paired tests over the runs that
    both inits finished with a value."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    inits = list(dict.fromkeys(final["init"])) if len(final) else []
    for (model, fraction, lr), block in final.groupby(["model", "fraction", "lr"], sort=True):
        for a, b in itertools.combinations([i for i in inits if i in set(block["init"])], 2):
            for column, greater in measures:
                if column not in block.columns:
                    continue
                va = block[block["init"] == a].set_index("run")[column].dropna()
                vb = block[block["init"] == b].set_index("run")[column].dropna()
                runs = sorted(set(va.index) & set(vb.index))
                result = paired_test([float(va[r]) for r in runs], [float(vb[r]) for r in runs])
                rows.append({"model": model, "fraction": fraction, "lr": lr, "measure": column, "a": a, "b": b,
                             **asdict(result), "alpha": alpha,
                             "verdict": verdict(result, a, b, alpha=alpha, greater=greater, measure=column)})
    columns = ["model", "fraction", "lr", "measure", "a", "b", *PairedResult.__dataclass_fields__, "alpha", "verdict"]
    return pd.DataFrame(rows, columns=columns)
