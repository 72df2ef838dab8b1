"""Test-suite wide set-up: the tests' TFF computations run on a worker the session owns.

`tff_worker.local_worker()` starts it with a parent-death signal and ends it
when the session ends, so no TFF worker outlives the tests, however they end.
"""

import pytest

from tff_flame import tff_worker


@pytest.fixture(autouse=True, scope='session')
def _tff_worker():
  with tff_worker.local_worker():
    yield
