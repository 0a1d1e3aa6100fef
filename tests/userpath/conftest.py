"""The user's path: the real ``python -m lit_transfer`` in a subprocess, with the defaults a user gets.

The helpers live in the sibling module ``userpath.py`` (tests import them with ``from userpath import ...``); they
are re-exported here for tests that still import them from this file.
"""

from __future__ import annotations

import pytest
from userpath import USER_DEFAULTS, lit, lit_command, max_abs_diff, scalars, state_dict, user_args, write_tree

__all__ = ["USER_DEFAULTS", "lit", "lit_command", "max_abs_diff", "scalars", "state_dict", "user_args", "write_tree"]


@pytest.fixture
def lit_cli():
    """The :func:`lit` runner, for tests that prefer a fixture."""
    return lit
