"""Test-suite wide set-up: no TFF worker may outlive the tests."""

import pytest

from tff_flame import runtime


@pytest.fixture(autouse=True, scope='session')
def _end_tff_workers():
  yield
  runtime.shutdown_tff_workers()
