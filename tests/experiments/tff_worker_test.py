"""`local_worker()` ends the TFF worker it ran; importing the harness starts nothing."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import tff_worker

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(args, timeout=600):
  # Pipes for stdout/stderr: a leftover worker holding them open would make this hang.
  return subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_a_script_inside_local_worker_ends_its_worker():
  before = set(tff_worker.orphaned_tff_worker_pids())
  code = ('import numpy as np, tensorflow_federated as tff\n'
          'from experiments import tff_worker\n'
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
  assert set(tff_worker.orphaned_tff_worker_pids()) - before == set()


def test_importing_the_harness_starts_no_worker():
  code = ('import experiments.tff_worker, experiments.loop, tff_flame\n'
          'assert not experiments.tff_worker.tff_worker_pids()\n'
          'print("ok")\n')
  out = _run(['-c', code], timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-3000:]


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
