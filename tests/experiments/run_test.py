"""The training binary: the main job ends its worker; bad flags and files stop it early."""

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


def test_main_job_ends_its_worker(tmp_path):
  before = set(tff_worker.orphaned_tff_worker_pids())
  out = _run(['-m', 'experiments.run', '--rounds=2', '--num_clients=6', '--clients_per_round=5',
              '--client_epochs=1', f'--output_dir={tmp_path}'])
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'round 2/2' in out.stdout and 'MA' in out.stdout and 'BA' in out.stdout
  # Only orphans count: other TFF programs on the machine may run workers of their own.
  assert set(tff_worker.orphaned_tff_worker_pids()) - before == set()
  rows = [json.loads(l) for l in (tmp_path / 'rounds.jsonl').read_text().splitlines()]
  assert [r['round'] for r in rows] == [1, 2]
  assert all(0.0 <= r['main_accuracy'] <= 1.0 and r['num_clients'] == 5 for r in rows)
  assert (tmp_path / 'summary.json').exists() and (tmp_path / 'metrics.png').stat().st_size > 0


def test_bad_flags_fail_before_training_and_name_the_flag(tmp_path):
  out_dir = tmp_path / 'never'
  out = _run(['-m', 'experiments.run', '--rounds=0', f'--output_dir={out_dir}'])
  assert out.returncode != 0 and '--rounds' in out.stderr
  out = _run(['-m', 'experiments.run', '--num_clients=4', '--clients_per_round=9',
              f'--output_dir={out_dir}'])
  assert out.returncode == 2 and 'clients_per_round' in out.stderr
  assert not out_dir.exists()


def test_bad_data_file_fails_before_training_and_names_the_file(tmp_path):
  data = tmp_path / 'nbaiot'
  data.mkdir()
  (data / 'benign_traffic.csv').write_text('a,b\n1,2\n')  # 2 columns, not 115
  (data / 'scan.csv').write_text('a,b\n1,2\n')
  out_dir = tmp_path / 'never'
  out = _run(['-m', 'experiments.run', '--task=nbaiot', f'--nbaiot_path={data}',
              f'--output_dir={out_dir}'])
  assert out.returncode == 2
  named = [line for line in out.stderr.splitlines() if line.startswith('error:')]
  assert named and '.csv' in named[0] and 'column' in named[0], out.stderr[-2000:]
  assert 'Traceback' not in out.stderr
  assert not out_dir.exists()
  out = _run(['-m', 'experiments.run', '--task=shakespeare', f'--shakespeare_text={tmp_path}/no.txt',
              f'--output_dir={out_dir}'])
  assert out.returncode == 2 and '--shakespeare_text' in out.stderr
  assert not out_dir.exists()


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
