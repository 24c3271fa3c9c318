"""A metric over the seeds of one config, and whether two configs' seeds reproduce the paper's order.

For the values ``x_1 .. x_n`` of ``n`` seeds: the mean, the sample standard deviation ``s``
(``n - 1`` in the denominator) and the standard error ``s / sqrt(n)``. For two rows that the paper
orders, ``better`` (the paper's better value) and ``worse``, ``d`` is the difference of our means
in the paper's direction (``mean(worse) - mean(better)`` when lower is better, the other way when
higher is better) and the margin is ``2 * max(se(better), se(worse))``; see :data:`VERDICT_RULE`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

REPRODUCED, REVERSED, NOT_RESOLVED = "reproduced", "reversed", "not resolved"
MIN_SEEDS = 2  # a standard error needs two seeds
VERDICT_RULE = (
    f"For each pair of rows that the paper orders (different values of the table's main metric), "
    f"d is the difference of our means in the paper's direction and m = 2 * max(SE_a, SE_b), SE = std / sqrt(n) "
    f"(std: the sample standard deviation over seeds): **{REPRODUCED}** if d > m, **{REVERSED}** if d < -m, "
    f"**{NOT_RESOLVED}** otherwise, and also when a row has fewer than {MIN_SEEDS} seeds."
)


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of ``n`` seeds' values (``std`` is nan for one seed)."""

    mean: float
    std: float
    n: int

    @property
    def standard_error(self) -> float:
        return self.std / math.sqrt(self.n)


def summarize(values: Sequence[float]) -> Summary:
    """The :class:`Summary` of one value per seed (at least one)."""
    if not values:
        raise ValueError("summarize needs at least one value")
    std = statistics.stdev(values) if len(values) >= MIN_SEEDS else math.nan
    return Summary(statistics.fmean(values), std, len(values))


@dataclass(frozen=True)
class Comparison:
    """Our means' difference in the paper's direction (``None``: a row has no value), its margin and
    the verdict."""

    difference: float | None
    margin: float | None
    verdict: str


def judge(better: Summary | None, worse: Summary | None, lower_is_better: bool) -> Comparison:
    """The verdict of :data:`VERDICT_RULE` on the paper's ``better`` row vs its ``worse`` row."""
    if better is None or worse is None:
        return Comparison(None, None, NOT_RESOLVED)
    difference = worse.mean - better.mean if lower_is_better else better.mean - worse.mean
    if min(better.n, worse.n) < MIN_SEEDS:
        return Comparison(difference, None, NOT_RESOLVED)
    margin = 2 * max(better.standard_error, worse.standard_error)
    if difference > margin:
        return Comparison(difference, margin, REPRODUCED)
    return Comparison(difference, margin, REVERSED if difference < -margin else NOT_RESOLVED)
