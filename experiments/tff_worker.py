"""Owns TFF's C++ execution worker for the harness's entry points.

TFF 0.87 runs TF computations in a `worker_binary` child process that
outlives the Python process and keeps its stdout open, so a pipeline such as
`python run.py | tail` never ends. Entry points run TFF inside `local_worker()`,
which ends the worker when the body ends. Nothing happens at import.
"""

import contextlib
import gc
import os
import signal
import sys
import time
from typing import Iterator

_WORKER_NAME = 'worker_binary'


def _parent_of(pid: int) -> int:
  """The parent pid from /proc (-1 if the process is gone)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      stat = f.read()
  except OSError:
    return -1
  # The command name is in parentheses and may hold spaces; ppid follows it.
  return int(stat[stat.rfind(')') + 2:].split()[1])


def _children_of(pid: int) -> list:
  return [int(e) for e in os.listdir('/proc') if e.isdigit() and _parent_of(int(e)) == pid]


def _cmdline(pid: int) -> str:
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      return f.read().replace(b'\0', b' ').decode(errors='replace')
  except OSError:
    return ''


def tff_worker_pids(parent: int = None) -> list:
  """Live (not zombie) TFF worker processes started by `parent` (default: this process)."""
  parent = os.getpid() if parent is None else parent
  return [pid for pid in _children_of(parent) if _WORKER_NAME in _cmdline(pid)]


def all_tff_worker_pids() -> list:
  """Every live TFF worker process on the machine, whoever started it."""
  pids = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      cmdline = _cmdline(int(entry))
      if _WORKER_NAME in cmdline and 'tensorflow_federated' in cmdline:
        pids.append(int(entry))
  return pids


def orphaned_tff_worker_pids() -> list:
  """Live TFF workers whose starter is gone (re-parented to init): the ones that leak."""
  return [pid for pid in all_tff_worker_pids() if _parent_of(pid) in (0, 1)]


def shutdown_tff_workers(timeout_s: float = 10.0) -> int:
  """Ends every TFF worker this process started; returns how many were running."""
  pids = tff_worker_pids()
  for sig in (signal.SIGINT, signal.SIGKILL):
    for pid in pids:
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + (timeout_s if sig == signal.SIGINT else 5.0)
    while time.monotonic() < deadline and tff_worker_pids():
      time.sleep(0.05)
    if not tff_worker_pids():
      break
  deadline = time.monotonic() + 5.0
  for pid in pids:  # Reap, so no zombie is left behind.
    while time.monotonic() < deadline:
      try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
          break
      except ChildProcessError:  # Already reaped (e.g. by TFF's own Popen).
        break
      time.sleep(0.02)
  return len(pids)


def _quiet_service_managers() -> None:
  """Stops TFF's worker managers from failing noisily at interpreter teardown.

  TFF's `ServiceManager.__del__` (one per execution context) kills its worker,
  but at teardown it runs after the `subprocess` module is gone and prints an
  AttributeError traceback. Once `shutdown_tff_workers` has ended the workers
  there is nothing left for it to do.
  """
  for obj in gc.get_objects():
    cls = type(obj)
    if cls.__name__ == 'ServiceManager' and 'executor_factory' in cls.__module__:
      cls.__del__ = lambda self: None


def end_tff() -> None:
  """Ends every TFF worker this process started (and TFF's own exit-time cleanup)."""
  shutdown_tff_workers()
  if 'tensorflow_federated' in sys.modules:
    _quiet_service_managers()


@contextlib.contextmanager
def local_worker() -> Iterator[None]:
  """Runs the body in a fresh local C++ execution context and ends its worker after.

  TFF's own manager of that worker would later try to kill the ended process
  again and print a ProcessLookupError; `end_tff` quiets it.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  tff.backends.native.set_sync_local_cpp_execution_context()
  try:
    yield
  finally:
    end_tff()

