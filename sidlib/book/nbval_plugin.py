"""pytest plugin: nbval's notebook cells also check their recorded numbers against tolerances.

nbval compares each cell's text with the committed outputs. Numbers from trained networks are
exempt from that (their cells are marked ``# NBVAL_IGNORE_OUTPUT``) and are recorded instead
(``sidlib.book.notebook.record``); after nbval has run such a cell, this hook compares the numbers it
recorded with the committed ones within ``notebooks/tolerances.yml`` and fails the cell if one
is off. Loaded by the repository's ``conftest.py``; elsewhere ``pytest -p sidlib.book.nbval_plugin --nbval``.
"""
from pathlib import Path

import pytest

from .notebook import check_cell


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    fresh = getattr(item, "test_outputs", None)  # nbval's IPyNbCell keeps what the cell printed
    if fresh is not None and hasattr(item, "cell"):
        check_cell(Path(str(item.fspath)), item.cell, fresh)
    return result
