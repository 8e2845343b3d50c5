"""Every docstring example in the package runs and gives what it shows (`doctest` over each module,
so the README's test command runs them without `--doctest-modules`)."""

import doctest
import importlib
import pkgutil

import pytest

import janus_ft

MODULES = sorted(m.name for m in pkgutil.walk_packages(janus_ft.__path__, "janus_ft.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_examples_are_there():
    """Modules whose pure functions are documented by examples keep them."""
    counts = {name: doctest.testmod(importlib.import_module(name)).attempted for name in
              ("janus_ft.data.collate", "janus_ft.data.mixture", "janus_ft.data.sources", "janus_ft.eval.metrics",
               "janus_ft.bench.throughput")}
    assert all(n > 0 for n in counts.values()), counts
