"""Test-suite wide set-up: no TFF worker may outlive the tests."""

import pytest

from experiments import tff_worker


@pytest.fixture(autouse=True, scope='session')
def _end_tff_workers():
  yield
  tff_worker.end_tff()
