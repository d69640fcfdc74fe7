"""mimkit.logs.quiet: loggers pass only records at or above the level inside the block, theirs after."""

import logging

import pytest

from mimkit.logs import quiet


def test_quiet_drops_what_is_below_its_level_and_gives_each_level_back(caplog):
    a, b = logging.getLogger("mimkit.test_a"), logging.getLogger("mimkit.test_b")
    a.setLevel(logging.DEBUG)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(RuntimeError), quiet("mimkit.test_a", "mimkit.test_b", level=logging.ERROR):
            a.warning("dropped")
            b.error("kept")
            raise RuntimeError  # the levels come back whatever happens in the block
        a.debug("passes again")
    assert [r.getMessage() for r in caplog.records] == ["kept", "passes again"]
    assert (a.level, b.level) == (logging.DEBUG, logging.NOTSET)
