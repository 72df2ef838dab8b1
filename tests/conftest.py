"""Test-suite wide set-up: TFF computations run on a worker the session owns, started on first need.

During the session TFF's default context is `_WorkerOnFirstUse`: the first
computation enters `tff_worker.execution_context()` (a worker with a
parent-death signal, now TFF's default context) and runs there; the session's
end leaves it (SIGKILL, reaped), so no worker outlives the tests however they
end. Tests that never run a TFF computation start none (tests/conftest_test.py).
After the session a computation fails (TFF's error context) instead of starting a
worker nobody owns; dropping TFF's import-time context here, while the modules
it needs still exist, also keeps its finalizer quiet at interpreter exit.
"""

import contextlib

import pytest
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.context_stack import runtime_error_context

from tff_flame import tff_worker


class _WorkerOnFirstUse(tff.framework.SyncContext):
  """Starts the session's worker on the first computation, on the session's exit stack."""

  def __init__(self, stack: contextlib.ExitStack):
    self._stack = stack

  def invoke(self, comp, arg):
    self._stack.enter_context(tff_worker.execution_context())
    return tff.framework.get_context_stack().current.invoke(comp, arg)


@pytest.fixture(autouse=True, scope='session')
def _tff_worker_on_first_use():
  with contextlib.ExitStack() as stack:
    stack.callback(tff.framework.set_default_context,  # Runs last.
                   runtime_error_context.RuntimeErrorContext())
    tff.framework.set_default_context(_WorkerOnFirstUse(stack))
    yield
