"""A search over a grid of values that cannot end at its edge: when the best value is the smallest or the
largest tried, one more value a ``factor`` beyond that end is scored, up to ``max_extensions`` times, and
the result says where and why the search stopped.

    search = search_grid([0.03, 0.1, 0.3, 1.0, 3.0, 10.0], score)   # score(values) -> [score or None]
    search.best, search.stopped   # e.g. 100.0, "the best value 100 lies inside the values tried"
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

MAX_EXTENSIONS = 3  # values tried beyond the grid, one at a time: 3 decades at factor 10


@dataclass(frozen=True)
class GridSearch:
    """Where a :func:`search_grid` ended.

    Attributes:
        scores: every value tried (the grid, then the extensions) and its score; None: it failed (e.g. the
            head diverged) and is never chosen.
        best: the value with the highest score (the smallest of equals).
        extensions: values tried beyond the grid.
        stopped: why the search stopped, in words.
    """

    scores: dict[float, float | None]
    best: float
    extensions: int
    stopped: str

    @property
    def at_edge(self) -> bool:
        """The best value is still the smallest or largest that trains (the limit was reached)."""
        working = [v for v, s in self.scores.items() if s is not None]
        return len(working) > 1 and self.best in (min(working), max(working))


def _best(scores: dict[float, float | None]) -> float | None:
    working = sorted((v, s) for v, s in scores.items() if s is not None)
    if not working:
        return None
    top = max(s for _, s in working)
    return next(v for v, s in working if s == top)  # the smallest of equals


def search_grid(
    values: Sequence[float],
    score: Callable[[list[float]], list[float | None]],
    factor: float = 10.0,
    max_extensions: int = MAX_EXTENSIONS,
) -> GridSearch:
    """Score ``values`` (one call), then extend past the end the best one sits at, one value per call, while
    the value beyond scores strictly better than the best so far.

    Args:
        values: the grid, positive and distinct (any order); a grid of one value is scored, never extended.
        score: scores of a list of values, in their order (None: the value failed).
        factor: each extension is the end value times ``factor`` (above) or divided by it (below).
        max_extensions: values tried beyond the grid at most.

    Raises:
        ValueError: a bad grid or factor; every value of the grid failed.
    """
    grid = sorted(float(v) for v in values)
    if not grid or grid[0] <= 0 or len(set(grid)) != len(grid):
        raise ValueError(f"a grid is distinct positive values, got {list(values)!r}")
    if factor <= 1:
        raise ValueError(f"the grid's extension factor must be > 1, got {factor!r}")
    scores = dict(zip(grid, score(grid), strict=True))
    best = _best(scores)
    if best is None:
        raise ValueError(f"every value of the grid {grid} failed")
    extensions = 0
    while True:
        tried = sorted(scores)
        if len(tried) == 1:
            return GridSearch(scores, best, extensions, "a single value: nothing to search")
        if best not in (tried[0], tried[-1]):
            why = f"the best value {best:g} lies inside the values tried"
            return GridSearch(scores, best, extensions, why)
        if extensions == max_extensions:
            why = (
                f"the best value {best:g} is still at the edge after {extensions} extension(s), the limit: "
                "the optimum may lie beyond"
            )
            return GridSearch(scores, best, extensions, why)
        beyond = best * factor if best == tried[-1] else best / factor
        (scores[beyond],) = score([beyond])
        extensions += 1
        if scores[beyond] is None:
            why = f"{beyond:g} failed: the best value {best:g} is at the edge of the values that work"
            return GridSearch(scores, best, extensions, why)
        if scores[beyond] > scores[best]:  # only a better score moves on (a tie: the optimum is found)
            best = beyond
