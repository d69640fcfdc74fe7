"""Grid searches that cannot end at their edge: extended past the end the best value sits at."""

import math

import pytest

from mimkit.eval.grid import search_grid

GRID = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]


def peaked(at):
    """A fake scorer with its optimum at ``at``: minus the squared distance in decades; records its calls."""
    calls = []

    def score(values):
        calls.append(list(values))
        return [-((math.log10(v) - math.log10(at)) ** 2) for v in values]

    return score, calls


def test_an_optimum_above_the_grid_is_reached_by_extension():
    score, calls = peaked(100.0)
    search = search_grid(GRID, score)
    # 10 is the grid's best (its top): 100 is tried and is better, 1000 is worse: 100 is inside
    assert calls == [GRID, [100.0], [1000.0]]
    assert search.best == pytest.approx(100.0) and search.extensions == 2 and not search.at_edge
    assert "100 lies inside" in search.stopped


def test_an_optimum_below_the_grid_is_reached_by_extension():
    score, calls = peaked(0.003)
    search = search_grid(GRID, score)
    assert [c[0] for c in calls[1:]] == pytest.approx([0.003, 0.0003])
    assert search.best == pytest.approx(0.003) and "inside" in search.stopped


def test_the_extensions_are_bounded_and_the_stop_says_so():
    score, calls = peaked(1e9)
    search = search_grid(GRID, score, max_extensions=3)
    assert len(calls) == 4 and search.best == pytest.approx(1e4)
    assert search.at_edge and "still at the edge after 3 extension(s)" in search.stopped
    assert sorted(search.scores) == pytest.approx([*GRID, 100.0, 1000.0, 1e4])


def test_an_interior_optimum_is_not_extended():
    score, calls = peaked(1.0)
    search = search_grid(GRID, score)
    assert calls == [GRID] and search.best == 1.0 and search.extensions == 0


def test_a_tie_beyond_the_edge_stops_at_the_edge():
    search = search_grid([1.0, 10.0], lambda values: [1.0 if v >= 10 else 0.0 for v in values])
    assert search.best == 10.0 and sorted(search.scores) == [1.0, 10.0, 100.0] and "inside" in search.stopped


def test_a_failed_extension_stops_and_is_never_chosen():
    search = search_grid([1.0, 10.0], lambda values: [None if v > 10 else v for v in values])
    assert search.best == 10.0 and search.scores[100.0] is None
    assert "100 failed" in search.stopped


def test_bad_grids_are_named():
    with pytest.raises(ValueError, match="distinct positive"):
        search_grid([1.0, -1.0], lambda v: v)
    with pytest.raises(ValueError, match="every value"):
        search_grid([1.0, 2.0], lambda v: [None] * len(v))
    assert search_grid([5.0], lambda v: [0.0]).stopped.startswith("a single value")
