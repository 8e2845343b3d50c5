"""The collate functions are pure and documented by their doctests: run them."""

import doctest

import janus_ft.collate
import janus_ft.mixture


def test_doctests():
    for module in (janus_ft.collate, janus_ft.mixture):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
