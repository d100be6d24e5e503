"""The fast default and the full suite: ``pytest`` skips tests marked ``slow``; ``pytest --full`` runs them.

CI runs ``pytest --full`` (see ``.ci/run`` and the README's "Run the tests"). Asking for a marker
explicitly (``pytest -m slow``) runs what it selects, slow or not.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        default=False,
        help="also run the tests marked slow: the full suite, as CI runs it",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--full") or config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow: the full suite runs it (pytest --full)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
