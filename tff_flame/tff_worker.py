"""TFF execution on executor services this process owns or is pointed at.

The one part of the library that manages processes, so that a pip user's
script does not leak TFF's worker. TFF 0.87 runs TF computations in a C++
`worker_binary` (an executor service spoken to over gRPC). Left to itself,
TFF starts one per process and ends it with SIGINT from a finalizer, which
leaks it when the Python process is killed (SIGTERM, SIGKILL) or started
without job control (the worker then ignores SIGINT); the orphan keeps the
caller's stdout open, so `python script.py | tail` hangs. Here the worker is
started by this module, so the script owns it:

- the worker is started with a parent-death signal (`PR_SET_PDEATHSIG`,
  SIGKILL): whatever ends the starting process, SIGKILL included, ends it;
- `execution_context()` ends the workers it started with SIGKILL when its body
  ends (they hold no state worth a graceful stop), so nothing waits on a
  SIGINT that may be ignored;
- the worker's stdout goes to /dev/null, so `python run.py | tail` ends.

    from tff_flame import tff_worker
    with tff_worker.execution_context():            # one local worker
      ...  # any TFF computation
    with tff_worker.execution_context(num_local=2):  # clients split over two
      ...
    with tff_worker.execution_context(['host-a:8000', 'host-b:8000']):
      ...  # remote services (e.g. `python -m experiments.worker` in a checkout)

With several services, TFF's mergeable context splits each computation's
clients over them; only computations with a single logical aggregation can be
split (every aggregator of this project qualifies). Nothing happens at import
(`import tff_flame` does not import this module); only entering the context
starts a worker.
"""

import atexit
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import time
from typing import Iterator, Optional, Sequence

_WORKER_NAME = 'worker_binary'
_PR_SET_PDEATHSIG = 1
_GRPC_OPTIONS = [('grpc.max_message_length', 2_000_000_000),
                 ('grpc.max_receive_message_length', 2_000_000_000),
                 ('grpc.max_send_message_length', 2_000_000_000)]
_OWNED = {}  # pid -> Popen of the workers this process started and has not ended.


def worker_binary_path() -> str:
  """TFF's C++ executor service binary in the installed package."""
  spec = importlib.util.find_spec('tensorflow_federated')  # Without importing TF.
  path = os.path.join(os.path.dirname(spec.origin), 'data', _WORKER_NAME)
  if not os.path.isfile(path):
    raise RuntimeError(f'TFF worker binary not found at {path}.')
  return path


def _die_with_parent_fn():
  """The `preexec_fn` that gives the child SIGKILL when its parent thread ends.

  libc is loaded here, before the fork; the child only makes the call (and
  exits if the parent is already gone, which the signal would miss).
  """
  prctl = ctypes.CDLL(None, use_errno=True).prctl
  parent = os.getpid()

  def die_with_parent():  # Runs in the child between fork and exec.
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
      os._exit(1)  # pylint: disable=protected-access
  return die_with_parent


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start_worker(port: Optional[int] = None, quiet: bool = True) -> tuple:
  """Starts a `worker_binary` that dies with this thread; returns (Popen, 'localhost:port').

  `quiet` sends its stderr (TF's C++ log) to /dev/null; its stdout always goes
  there. Start it from the main thread: the parent-death signal fires when
  the starting thread ends.
  """
  port = free_port() if port is None else port
  process = subprocess.Popen(
      [worker_binary_path(), f'--port={port}'], stdin=subprocess.DEVNULL,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None,
      preexec_fn=_die_with_parent_fn(), start_new_session=True)
  _OWNED[process.pid] = process
  return process, f'localhost:{port}'


def stop_worker(process: subprocess.Popen) -> None:
  """Ends a worker from `start_worker` at once (SIGKILL) and reaps it."""
  with contextlib.suppress(ProcessLookupError):
    process.kill()
  process.wait()
  _OWNED.pop(process.pid, None)


def tff_worker_pids() -> list:
  """Live TFF workers started by this process through this module."""
  return [pid for pid, p in _OWNED.items() if p.poll() is None]


def _async_context(address: str, process: Optional[subprocess.Popen] = None,
                   ready_timeout_s: float = 60.0):
  """A `tff.framework.AsyncExecutionContext` on the executor service at `address`."""
  import grpc  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  channel = grpc.insecure_channel(address, _GRPC_OPTIONS)
  stub = tff.framework.RemoteExecutorGrpcStub(channel)
  deadline = time.monotonic() + ready_timeout_s
  while not stub.is_ready:
    if process is not None and process.poll() is not None:
      raise RuntimeError(f'TFF worker for {address} exited with {process.returncode}.')
    if time.monotonic() > deadline:
      raise RuntimeError(f'No TFF executor service answered at {address} within '
                         f'{ready_timeout_s:.0f} s (is a TFF worker_binary, e.g. '
                         f'`python -m experiments.worker --port=...` in a checkout, running '
                         f'there and reachable?).')
    time.sleep(0.05)

  def stack_fn(cardinalities):
    # Computations without client values (e.g. `initialize`, or one half of
    # a merged computation) carry no CLIENTS cardinality; the merge needs one.
    if cardinalities.get(tff.CLIENTS) is None:
      cardinalities[tff.CLIENTS] = 0
    executor = tff.framework.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  return tff.framework.AsyncExecutionContext(
      executor_fn=tff.framework.ResourceManagingExecutorFactory(stack_fn),
      compiler_fn=tff.backends.native.desugar_and_transform_to_native,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result)


_AT_EXIT_REGISTERED = []


def _drop_tff_import_time_context() -> None:
  """At exit, lets TFF's import-time local context go while modules still exist.

  `import tensorflow_federated` installs a local context whose worker manager
  has a `__del__` that, run at interpreter teardown, fails on the already
  torn-down `subprocess` module and prints a traceback (whether or not it
  ever started a worker). Replacing the default context in an `atexit`
  hook collects it earlier, cleanly.
  """
  # pylint: disable=g-import-not-at-top
  import gc
  import tensorflow_federated as tff
  from tensorflow_federated.python.core.impl.context_stack import runtime_error_context
  tff.framework.set_default_context(runtime_error_context.RuntimeErrorContext())
  gc.collect()


@contextlib.contextmanager
def execution_context(addresses: Sequence[str] = (), num_local: int = 1,
                      quiet: bool = True) -> Iterator[list]:
  """Makes TFF run on executor services for the body; yields their addresses.

  With `addresses` (HOST:PORT of running services) it connects to those and
  starts nothing; otherwise it starts `num_local` workers of its own and ends
  them (SIGKILL, reaped) when the body ends, however it ends. TFF's previous
  default context is restored after. One service runs computations as TFF's
  own local context does; several run each through TFF's mergeable context,
  the clients split across them.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  if not _AT_EXIT_REGISTERED:
    atexit.register(_drop_tff_import_time_context)
    _AT_EXIT_REGISTERED.append(True)
  stack = tff.framework.get_context_stack()
  previous = stack.current
  started = []
  try:
    if not addresses:
      for _ in range(num_local):
        started.append(start_worker(quiet=quiet))
      addresses = [address for _, address in started]
    processes = dict((a, p) for p, a in started)
    contexts = [_async_context(a, processes.get(a)) for a in addresses]
    if len(contexts) == 1:
      context = tff.framework.SyncExecutionContext(
          executor_fn=contexts[0].executor_factory,
          compiler_fn=tff.backends.native.desugar_and_transform_to_native,
          transform_args=tff.tensorflow.transform_args,
          transform_result=tff.tensorflow.transform_result)
    else:
      context = tff.backends.native.create_mergeable_comp_execution_context(contexts)
    tff.framework.set_default_context(context)
    yield list(addresses)
  finally:
    tff.framework.set_default_context(previous)
    for process, _ in started:
      stop_worker(process)


@contextlib.contextmanager
def local_worker(num_local: int = 1, quiet: bool = True) -> Iterator[None]:
  """`execution_context()` on `num_local` workers of this process's own."""
  with execution_context(num_local=num_local, quiet=quiet):
    yield


# Diagnostics for CI and tests, not needed for clean-up: which TFF workers are
# running on this machine, and which have lost their starter.

def _parent_of(pid: int) -> int:
  """The parent pid from /proc (-1 if the process is gone)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      stat = f.read()
  except OSError:
    return -1
  # The command name is in parentheses and may hold spaces; ppid follows it.
  return int(stat[stat.rfind(')') + 2:].split()[1])


def _cmdline(pid: int) -> str:
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      return f.read().replace(b'\0', b' ').decode(errors='replace')
  except OSError:
    return ''


def all_tff_worker_pids() -> list:
  """Every live TFF worker process on the machine, whoever started it."""
  pids = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      cmdline = _cmdline(int(entry))
      if _WORKER_NAME in cmdline and 'tensorflow_federated' in cmdline:
        pids.append(int(entry))
  return pids


def _cwd_of(pid: int) -> Optional[str]:
  try:
    return os.readlink(f'/proc/{pid}/cwd')
  except OSError:
    return None


def orphaned_tff_worker_pids(cwd: Optional[str] = None) -> list:
  """Live TFF workers whose starter is gone (re-parented to init): the ones that leak.

  With `cwd`, only those running in that folder (e.g. this repository's,
  leaving other checkouts' workers on a shared machine out).
  """
  real = None if cwd is None else os.path.realpath(cwd)
  return [pid for pid in all_tff_worker_pids() if _parent_of(pid) in (0, 1) and
          (real is None or _cwd_of(pid) == real)]


def child_tff_worker_pids(parent: int) -> list:
  """Live TFF workers whose parent is `parent` (e.g. a binary a test started)."""
  return [pid for pid in all_tff_worker_pids() if _parent_of(pid) == parent]


def workers_gone(pids: Sequence[int], timeout: float = 10.0) -> bool:
  """Waits up to `timeout` s for the TFF workers `pids` to exit; whether they all did."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if not set(pids) & set(all_tff_worker_pids()):
      return True
    time.sleep(0.1)
  return False
