"""The grid report: aggregation of finished cells, the table, resuming."""

import json
import pathlib
import sys

import pytest

from benchmarks import defense_grid


def write_cell(root, task, attack, defense, rounds):
  out = defense_grid.cell_dir(root, task, attack, defense)
  out.mkdir(parents=True)
  (out / 'rounds.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rounds))
  (out / 'summary.json').write_text(json.dumps(dict(seconds=1.5)))


def test_collect_and_markdown(tmp_path):
  write_cell(tmp_path, 'digits', 'none', 'none',
             [dict(round=1, main_accuracy=0.5, backdoor_accuracy=0.1, attacking=False)])
  write_cell(tmp_path, 'digits', 'pgd', 'flame', [
      dict(round=1, main_accuracy=0.6, backdoor_accuracy=0.2, attacking=False, tpr=None, tnr=1.0),
      dict(round=2, main_accuracy=0.8, backdoor_accuracy=0.05, attacking=True, tpr=1.0, tnr=0.5),
      dict(round=3, main_accuracy=0.9, backdoor_accuracy=0.04, attacking=True, tpr=0.5, tnr=1.0)])
  rows = defense_grid.collect(tmp_path, ['digits'], ['none', 'pgd'], ['none', 'flame'])
  assert len(rows) == 2
  flame = [r for r in rows if r['defense'] == 'flame'][0]
  assert flame['main_accuracy'] == 0.9 and flame['backdoor_accuracy'] == 0.04
  assert flame['tpr'] == pytest.approx(0.75) and flame['tnr'] == pytest.approx(0.75)
  table = defense_grid.markdown(rows, ['none', 'flame'])
  assert '| none | 50.0 / 10.0 | - | - |' in table
  assert '| pgd | - | 90.0 / 4.0 | 75.0 / 75.0 |' in table


def test_finished_cells_are_not_run_again(tmp_path):
  write_cell(tmp_path, 'digits', 'none', 'flame', [dict(round=1, main_accuracy=0.5,
                                                        backdoor_accuracy=0.0)])
  cell, seconds, status = defense_grid.run_cell(tmp_path, 'digits', 'none', 'flame', 0, [])
  assert status == 'cached' and seconds == 0.0


def test_tff_workers_need_one_cell_at_a_time(tmp_path):
  import os, pathlib, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  repo = pathlib.Path(__file__).resolve().parents[2]
  out = subprocess.run([sys.executable, '-m', 'benchmarks.defense_grid', '--tasks=digits',
                        '--tff_workers=localhost:1', '--processes=2',
                        f'--output_dir={tmp_path}'], cwd=repo, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(repo)))
  assert out.returncode != 0 and '--processes=1' in out.stderr
  assert not list(tmp_path.iterdir())


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
