"""The library stands alone: importing `tff_flame` loads no harness, plotting or oracle, and
starts no process (its worker module, `tff_flame.tff_worker`, is not imported)."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
HARNESS = ('experiments', 'tasks', 'benchmarks', 'matplotlib', 'hdbscan')


def test_import_tff_flame_loads_neither_the_harness_nor_matplotlib_and_starts_nothing():
  code = ('import os, sys, tff_flame\n'
          f'loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HARNESS!r} '
          f'or m in {HARNESS!r} or m == "tff_flame.tff_worker")\n'
          'from tff_flame import tff_worker\n'  # Only now, to look for workers.
          'print(loaded, tff_worker.child_tff_worker_pids(os.getpid()))\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == '[] []'
  assert 'Traceback' not in out.stderr


def test_the_public_names():
  import tff_flame  # pylint: disable=g-import-not-at-top
  for name in ('FlameFactory', 'KrumFactory', 'CoordinateMedianFactory', 'TrimmedMeanFactory',
               'NonFiniteFilterFactory', 'FoolsGoldFactory', 'FreqFedFactory', 'MultiMetricsFactory',
               'GatheredAggregationFactory', 'build_flame_fed_avg', 'hdbscan_labels',
               'noise_lambda_from_privacy'):
    assert hasattr(tff_flame, name), name
  assert not hasattr(tff_flame, 'build_aggregator')  # a harness name (experiments.defenses)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
