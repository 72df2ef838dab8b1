"""The test session starts its TFF worker only when a test runs a TFF computation, and no
worker outlives the session: pytest runs in a subprocess with tests/conftest.py as a plugin
and a recorder of every worker `tff_worker.start_worker` starts."""

import os
import pathlib
import subprocess
import sys

import pytest

from tff_flame import tff_worker

REPO = pathlib.Path(__file__).resolve().parents[1]

RECORDER = '''
import os
from tff_flame import tff_worker

_start_worker = tff_worker.start_worker


def _recording_start_worker(*args, **kwargs):
  process, address = _start_worker(*args, **kwargs)
  with open(os.environ['STARTED_WORKERS'], 'a') as f:
    f.write(f'{process.pid}\\n')
  return process, address


tff_worker.start_worker = _recording_start_worker
'''

IMPORTS_TFF = '''
import numpy as np
import tensorflow_federated as tff


def test_builds_a_computation_without_running_it():
  double = tff.tensorflow.computation(lambda x: x * 2.0, np.float32)
  assert str(double.type_signature) == '(float32 -> float32)'
'''

RUNS_TFF = '''
import numpy as np
import tensorflow_federated as tff


def test_runs_a_computation():
  double = tff.tensorflow.computation(lambda x: x * 2.0, np.float32)
  assert double(np.float32(2.0)) == 4.0


def test_runs_another_on_the_same_worker():
  triple = tff.tensorflow.computation(lambda x: x * 3.0, np.float32)
  assert triple(np.float32(2.0)) == 6.0
'''

def _pytest(tmp_path, test_source: str):
  """Runs pytest on one test file with tests/conftest.py; returns (result, started worker pids)."""
  (tmp_path / 'record_workers.py').write_text(RECORDER)
  (tmp_path / 'some_test.py').write_text(test_source)
  started = tmp_path / 'started.txt'
  env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{tmp_path}',
             STARTED_WORKERS=str(started), TF_CPP_MIN_LOG_LEVEL='3')
  # Pipes for the output: a leftover worker holding them open would make this hang.
  out = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                        '-p', 'record_workers', '-p', 'tests.conftest', 'some_test.py'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  pids = [int(p) for p in started.read_text().split()] if started.exists() else []
  return out, pids


def test_a_session_that_runs_no_tff_computation_starts_no_worker(tmp_path):
  out, started = _pytest(tmp_path, IMPORTS_TFF)
  assert out.returncode == 0, out.stdout[-3000:]
  assert started == []


def test_the_first_computation_starts_the_one_worker_and_the_session_end_ends_it(tmp_path):
  out, started = _pytest(tmp_path, RUNS_TFF)
  assert out.returncode == 0, out.stdout[-3000:]
  assert '2 passed' in out.stdout
  assert len(started) == 1
  assert tff_worker.workers_gone(started, timeout=2.0)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parent
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
