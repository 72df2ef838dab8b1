"""The context manager ends the TFF worker it ran, also from a shell without job
control and under SIGKILL; importing the harness starts nothing."""

import os
import pathlib
import subprocess
import sys

import pytest

from tff_flame import tff_worker

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(args, timeout=600):
  # Pipes for stdout/stderr: a leftover worker holding them open would make this hang.
  return subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_a_script_inside_local_worker_ends_its_worker():
  before = set(tff_worker.orphaned_tff_worker_pids(cwd=REPO))
  code = ('import numpy as np, tensorflow_federated as tff\n'
          'from tff_flame import tff_worker\n'
          '@tff.tensorflow.computation(np.float32)\n'
          'def double(x):\n  return x * 2.0\n'
          'with tff_worker.local_worker():\n'
          '  assert double(np.float32(2.0)) == 4.0\n'
          '  assert tff_worker.tff_worker_pids(), "a worker should be running"\n'
          'assert not tff_worker.tff_worker_pids(), "the worker should be gone"\n'
          'print("ok")\n')
  out = _run(['-c', code], timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith('ok')
  # Only orphans count: other TFF programs on the machine may run workers of their own.
  assert set(tff_worker.orphaned_tff_worker_pids(cwd=REPO)) - before == set()


SCRIPT = ('import sys, numpy as np, tensorflow_federated as tff\n'
          'from tff_flame import tff_worker\n'
          '@tff.tensorflow.computation(np.float32)\n'
          'def double(x):\n  return x * 2.0\n'
          'with tff_worker.execution_context():\n'
          '  assert double(np.float32(2.0)) == 4.0\n'
          '  print("worker", *tff_worker.tff_worker_pids(), flush=True)\n'
          '  if sys.argv[1:] == ["hang"]:\n'
          '    import time; time.sleep(600)\n'
          'print("done", flush=True)\n')


def _worker_pids_in(output: str) -> list:
  return [int(p) for line in output.splitlines() if line.startswith('worker ')
          for p in line.split()[1:]]


def test_a_script_started_without_job_control_leaves_no_worker(tmp_path):
  """`setsid nohup python script.py &` in a shell script: TFF's own clean-up (SIGINT)
  would be ignored there; the context manager's SIGKILL is not."""
  script = tmp_path / 'script.py'
  script.write_text(SCRIPT)
  log = tmp_path / 'log.txt'
  shell = (f'setsid nohup {sys.executable} {script} > {log} 2>&1 &\n'
           'wait $!\n')
  out = subprocess.run(['bash', '-c', shell], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
  text = log.read_text()
  assert out.returncode == 0 and 'done' in text, text[-3000:]
  pids = _worker_pids_in(text)
  assert pids and tff_worker.workers_gone(pids, timeout=2.0)


def test_sigkill_inside_the_context_manager_ends_the_worker_too(tmp_path):
  process = subprocess.Popen([sys.executable, '-c', SCRIPT, 'hang'], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True)
  line = process.stdout.readline()
  pids = _worker_pids_in(line)
  assert pids, line
  process.kill()
  process.wait()
  process.stdout.close()
  assert tff_worker.workers_gone(pids), ('the worker outlived its SIGKILLed starter '
                                         '(parent-death signal)')


def test_importing_the_harness_starts_no_worker():
  code = ('import tff_flame.tff_worker, experiments.loop, tff_flame\n'
          'assert not tff_flame.tff_worker.tff_worker_pids()\n'
          'print("ok")\n')
  out = _run(['-c', code], timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-3000:]


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
