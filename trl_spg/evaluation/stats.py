"""Accuracy and its standard errors: one ratio estimator for every task, clustered and paired variants.

Every task scores a completion as ``correct`` out of ``total`` (1 per problem, or a puzzle's empty cells for Sudoku),
and accuracy is ``sum(correct) / sum(total)``. Its standard error is the linearised ratio estimator's over units
(problems, or clusters of problems whose results are correlated, e.g. Sudoku puzzles made from one solution grid):

    SE = sqrt(G / (G - 1) * sum_g (y_g - r * x_g)^2) / sum_g x_g

with ``y_g, x_g`` the sums of unit ``g`` and ``G`` units; for one point per problem it is
``sqrt(acc * (1 - acc) / (n - 1))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def ratio_stderr(
    numerators: Sequence[float], denominators: Sequence[float], clusters: Sequence | None = None
) -> float:
    """Standard error of ``sum(numerators) / sum(denominators)`` (see the module docstring).

    Each position is one unit; with ``clusters`` the units sharing a label are summed into one unit first. 0.0 when
    the denominators sum to 0 or there is a single unit.
    """
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators but {len(denominators)} denominators")
    if clusters is None:
        pairs = list(zip(numerators, denominators))
    else:
        if len(clusters) != len(numerators):
            raise ValueError(f"{len(clusters)} cluster labels for {len(numerators)} units")
        sums: dict = {}
        for y, x, label in zip(numerators, denominators, clusters):
            total_y, total_x = sums.get(label, (0.0, 0.0))
            sums[label] = (total_y + y, total_x + x)
        pairs = list(sums.values())
    total = sum(x for _, x in pairs)
    if not total:
        return 0.0
    ratio = sum(y for y, _ in pairs) / total
    count = len(pairs)
    residual = sum((y - ratio * x) ** 2 for y, x in pairs)
    return math.sqrt(residual * count / max(count - 1, 1)) / total


def summarize(records: Sequence[dict], cluster_key: str | None = None) -> dict:
    """``problems``, ``correct``, ``total``, ``accuracy`` and ``stderr`` of scored records; with ``cluster_key`` (a
    record field, e.g. Sudoku's ``solution``) also ``clusters`` and ``stderr_clustered``."""
    correct = [float(r["correct"]) for r in records]
    total = [float(r["total"]) for r in records]
    denominator = sum(total)
    summary = {
        "problems": len(records),
        "correct": sum(correct),
        "total": denominator,
        "accuracy": sum(correct) / denominator if denominator else 0.0,
        "stderr": ratio_stderr(correct, total),
    }
    if cluster_key is not None:
        labels = [r[cluster_key] for r in records]
        summary["clusters"] = len(set(labels))
        summary["stderr_clustered"] = ratio_stderr(correct, total, labels)
    return summary


def paired_difference(before: Sequence[dict], after: Sequence[dict], cluster_key: str | None = None) -> dict:
    """Accuracy change ``after - before`` on the same problems (records in the same order) and its paired standard
    error: the unit is the per-problem change of ``correct`` (over the problem's ``total``), or with ``cluster_key``
    its per-cluster sum (``stderr_clustered``)."""
    if len(before) != len(after):
        raise ValueError(f"paired records differ in number: {len(before)} before, {len(after)} after")
    changes = [float(a["correct"]) - float(b["correct"]) for b, a in zip(before, after)]
    total = [float(b["total"]) for b in before]
    result = {
        "difference": summarize(after)["accuracy"] - summarize(before)["accuracy"],
        "stderr": ratio_stderr(changes, total),
    }
    if cluster_key is not None:
        result["stderr_clustered"] = ratio_stderr(changes, total, [b[cluster_key] for b in before])
    return result
