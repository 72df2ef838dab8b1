"""The evaluation report: the run order, per-cell metrics and the tables, on synthetic cells."""

import json
import pathlib
import sys

import numpy as np
import pytest

from benchmarks import adaptive
from benchmarks import cells
from benchmarks import evaluation
from benchmarks.cells import Cell


def write_cell(root, cell, rounds, clients_per_round=10, pretrain_ma=0.6):
  out = cells.cell_dir(root, cell)
  out.mkdir(parents=True)
  (out / 'rounds.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rounds))
  (out / 'summary.json').write_text(json.dumps(dict(
      seconds=12.0, config=dict(clients_per_round=clients_per_round),
      pretrain=dict(main_accuracy=pretrain_ma))))
  (out / 'cell.json').write_text(json.dumps(dict(flags=[], code='abc1234')))


def attack_rounds(ma, ba, malicious=(3, 5, 2), tpr=(1.0, 0.5, 1.0), tnr=(1.0, 0.8, 0.9)):
  rows = [dict(round=1, main_accuracy=0.5, backdoor_accuracy=0.05, attacking=False)]
  for i, (m, t, n) in enumerate(zip(malicious, tpr, tnr)):
    rows.append(dict(round=i + 2, main_accuracy=ma, backdoor_accuracy=ba + i * 0.1,
                     attacking=True, num_malicious=m, tpr=t, tnr=n))
  return rows


def test_run_order_holds_every_cell_once_most_needed_first():
  order = evaluation.run_order(evaluation.SECTIONS)
  every = [c for s in evaluation.SECTIONS for c in evaluation.cells_of(s)]
  assert sorted(order) == sorted(set(every)) and len(set(order)) == len(order)
  # First the attackers who know the defense against none, FLAME and the hardened FLAME.
  first = [c for c in order if c.seed == 0 and c.variant == adaptive.TWENTY and
           c.defense in adaptive.SEEDED]
  assert order[:len(first)] == first
  assert {c.attack for c in first} == set(adaptive.ATTACKS) | {'none'}
  main = [c for c in order if c.variant == cells.BASE and c.task == 'fashion_mnist']
  first_other = min(i for i, c in enumerate(main) if c.attack not in ('none',
                                                                      'constrain_and_scale'))
  assert all(c.seed == 0 for c in main[:first_other])
  assert order.index(Cell('fashion_mnist', 'constrain_and_scale', 'flame', 'base', 0)) < \
      order.index(Cell('fashion_mnist', 'dba', 'none', 'base', 0)) < \
      order.index(Cell('fashion_mnist', 'data_poisoning', 'none', 'base', 0))
  # A cell two sections share (the clients-per-round sweep's 20) runs once, at the first rank.
  shared = Cell('fashion_mnist', 'constrain_and_scale', 'flame', adaptive.TWENTY, 0)
  assert order.count(shared) == 1 and order.index(shared) < len(first)
  with pytest.raises(ValueError, match='unknown section'):
    evaluation.cells_of('nope')


def test_cell_flags_name_the_variant_defense_and_seed(tmp_path):
  cell = Cell('fashion_mnist', 'dba', 'flame_bare', 'malicious_fraction=0.4', 2)
  flags = cells.cell_flags(cell, tmp_path)
  assert '--malicious_fraction=0.4' in flags and '--seed=2' in flags
  assert '--clustering_space=update' in flags and '--attack=dba' in flags
  assert flags[-1] == f'--output_dir={cells.cell_dir(tmp_path, cell)}'
  for task in cells.TASK_FLAGS:  # every cell names its task exactly once
    flags = cells.cell_flags(Cell(task, 'none', 'none', 'base', 0), tmp_path)
    assert [f for f in flags if f.startswith('--task=')] == [f'--task={task}']


def test_read_cell_metrics(tmp_path):
  cell = Cell('fashion_mnist', 'constrain_and_scale', 'flame', 'base', 0)
  assert cells.read_cell(tmp_path, cell) is None
  write_cell(tmp_path, cell, attack_rounds(0.7, 0.1))
  r = cells.read_cell(tmp_path, cell)
  assert r['main_accuracy'] == 0.7 and r['backdoor_accuracy'] == pytest.approx(0.3)
  assert r['attack_ba'] == pytest.approx(0.2)
  assert r['tpr'] == pytest.approx(2.5 / 3) and r['tnr'] == pytest.approx(0.9)
  assert (r['attack_rounds'], r['half_rounds']) == (3, 1)  # 5 of 10 attackers once
  assert r['pretrain_ma'] == 0.6 and r['code'] == 'abc1234'


def test_report_tables_and_mean_over_seeds(tmp_path):
  mas, bas = [0.71, 0.74, 0.75], [0.05, 0.09, 0.07]
  for seed, (ma, ba) in enumerate(zip(mas, bas)):
    write_cell(tmp_path, Cell('fashion_mnist', 'constrain_and_scale', 'flame', 'base', seed),
               attack_rounds(ma, ba - 0.2))
  write_cell(tmp_path, Cell('fashion_mnist', 'none', 'none', 'base', 0),
             [dict(round=1, main_accuracy=0.72, backdoor_accuracy=0.06, attacking=False)])
  write_cell(tmp_path, Cell('fashion_mnist', 'constrain_and_scale', 'multi_krum',
                            'malicious_fraction=0.4', 0), attack_rounds(0.6, 0.5))
  write_cell(tmp_path, Cell('digits', 'dba', 'flame', 'base', 0), attack_rounds(0.9, 0.01))
  write_cell(tmp_path, Cell('fashion_mnist', 'none', 'flame', 'base', 0),
             [dict(round=r, main_accuracy=0.7, backdoor_accuracy=0.06, attacking=False,
                   num_clients=10.0, num_admitted=a, tnr=a / 10) for r, a in ((1, 6.0), (2, 7.0))])
  report = tmp_path / 'report.md'
  evaluation.write_report(tmp_path, report)
  text = report.read_text()
  ma = f'{100 * np.mean(mas):.1f} ± {100 * np.std(mas):.1f} (3)'
  ba = f'{100 * np.mean(bas):.1f} ± {100 * np.std(bas):.1f} (3)'
  assert f'| flame | {ma} / {ba} |' in text
  assert f'7 of {len(evaluation.run_order(evaluation.SECTIONS))} cells finished' in text
  # Targets: seed 0's BA 0.05 vs clean 0.06 and MA 0.71 vs 0.72, TPR 83.3% < 90%.
  assert '| constrain_and_scale | -1.0 | -1.0 | 83.3 | 90.0 | no: TPR |' in text
  # Means over the 3 seeds against the clean run's only seed: BA 7.0 - 6.0, MA 73.3 - 72.0.
  assert ('| constrain_and_scale (mean of 3 seeds) | +1.0 | +1.3 | 83.3 | 90.0 | no: TPR |'
          in text)
  # Digits' table has one row, flame, with DBA filled and the other attacks empty.
  digits = text[text.index('## digits'):text.index('## nbaiot')]
  assert '| flame | - / - | - / - | 90.0 / 21.0 | - / - | - | - | 83.3 / 90.0 | - |' in digits
  assert '| dba / flame / seed 0 | 90.0 | 21.0 | 11.0 |' in digits and '| none |' not in digits
  assert 'constrain_and_scale / multi_krum / malicious_fraction=0.4 / seed 0 | 60.0 | 70.0' in text
  assert 'With no attacker, FLAME admitted 6.5 of 10 clients a round on average (TNR 65.0)' in text
  assert (tmp_path / 'evaluation_sweeps.png').exists()


def test_adaptive_section_tables(tmp_path):
  twenty = adaptive.TWENTY
  write_cell(tmp_path, Cell('fashion_mnist', 'none', 'none', twenty, 0),
             [dict(round=1, main_accuracy=0.76, backdoor_accuracy=0.05, attacking=False)],
             clients_per_round=20)
  for seed, ba in enumerate((0.9, 0.7, 0.8)):  # FLAME loses to stay_small over 3 seeds
    write_cell(tmp_path, Cell('fashion_mnist', 'stay_small', 'flame', twenty, seed),
               attack_rounds(0.74, ba - 0.2, malicious=(6, 5, 7), tpr=(0.0, 0.0, 0.2),
                             tnr=(0.4, 0.3, 0.35)), clients_per_round=20)
  write_cell(tmp_path, Cell('fashion_mnist', 'stay_small', 'none', twenty, 0),
             attack_rounds(0.75, 0.5), clients_per_round=20)
  write_cell(tmp_path, Cell('fashion_mnist', 'stay_small', 'flame_hardened', twenty, 0),
             attack_rounds(0.75, -0.15, tpr=(1.0, 1.0, 0.5), tnr=(0.5, 0.6, 0.7)),
             clients_per_round=20)
  write_cell(tmp_path, Cell('fashion_mnist', 'none', 'flame_hardened', twenty, 0),
             [dict(round=1, main_accuracy=0.75, backdoor_accuracy=0.05, attacking=False,
                   tnr=0.6)], clients_per_round=20)
  write_cell(tmp_path, Cell('fashion_mnist', 'stay_small', 'freqfed', twenty, 0),
             attack_rounds(0.74, 0.75), clients_per_round=20)
  write_cell(tmp_path, Cell('fashion_mnist', 'stay_small', 'flame',
                            adaptive.fraction_variant(0.25), 0),
             attack_rounds(0.74, 0.1, tpr=(0.0, 0.5, 1.0), tnr=(0.3, 0.3, 0.3)),
             clients_per_round=20)
  write_cell(tmp_path, Cell('fashion_mnist', 'stay_small', 'none',
                            adaptive.fraction_variant(0.25), 0),
             attack_rounds(0.74, 0.0), clients_per_round=20)
  report = tmp_path / 'report.md'
  evaluation.write_report(tmp_path, report)
  text = report.read_text()
  section = text[text.index('## Attackers who know the defense'):]
  # Final BA over 3 seeds 90, 70, 80 (mean ± std) / highest in an attack round (the last here).
  flame_row = [l for l in section.splitlines() if l.startswith('| flame |')][0]
  assert flame_row.split(' | ')[1] == f'{80:.1f} ± {100 * np.std([.9, .7, .8]):.1f} (3) / 80.0'
  hardened_row = [l for l in section.splitlines() if l.startswith('| flame_hardened |')][0]
  assert hardened_row.split(' | ')[1] == '5.0 / 5.0'
  assert '| stay_small | 70.0 | 70.0 | no |' in section  # 0.5 + 2 x 0.1: it does not implant
  # Targets: hardened final BA 0.05 vs floor 0.05, MA 0.75 vs 0.76.
  assert '| stay_small | 5.0 | +0.0 | -1.0 | 1 | yes | yes |' in section
  assert 'flame_hardened TNR 60.0 (target 80%: missed)' in section
  assert ('stay_small 70.0 / 80.0 / 5.0' in text and 'no defense / FLAME / hardened FLAME'
          in text)  # the headline
  assert 'The other defenses under the same attacks (final BA, seed 0): stay_small: freqfed ' \
      '95.0.' in text
  # BA against the radius: fraction 0.25 from its cells, 0.7 (the default) from the main ones.
  assert '| flame | 30.0 (50.0 / 30.0) | - | 90.0 (6.7 / 35.0) | - |' in section  # seed 0
  assert '| none | 20.0 | - | 70.0 | - |' in section
  per_round = section[section.index('| flame: attack |'):]
  assert '| stay_small | r2: 0.0 / 40.0 (6); r3: 0.0 / 30.0 (5); r4: 20.0 / 35.0 (7) |' in \
      per_round


def test_only_the_adaptive_section_is_rewritten(tmp_path):
  twenty = adaptive.TWENTY
  write_cell(tmp_path, Cell('fashion_mnist', 'stay_small', 'flame', twenty, 0),
             attack_rounds(0.74, 0.7), clients_per_round=20)
  report = tmp_path / 'report.md'
  kept = '# Old report\n\nmain table, measured earlier\n\n'
  report.write_text(kept + evaluation.GEOMETRIES + '\n\nold geometries\n')
  for _ in range(2):  # inserted once, then replaced in place
    evaluation.write_adaptive_section(tmp_path, report)
    text = report.read_text()
    assert text.startswith(kept + evaluation.ADAPTIVE_BEGIN)
    assert text.endswith(evaluation.ADAPTIVE_END + '\n\n' + evaluation.GEOMETRIES +
                         '\n\nold geometries\n')
    assert text.count('## Attackers who know the defense') == 1
    total = len(set(c for s in adaptive.SECTIONS for c in adaptive.cells_of(s)))
    assert f'This section: 1 of {total} cells finished' in text
    assert '| flame | 90.0 / 90.0 |' in text
  # The whole report carries the same markers, so a later splice finds them.
  evaluation.write_report(tmp_path, report)
  evaluation.write_adaptive_section(tmp_path, report)
  assert report.read_text().count(evaluation.ADAPTIVE_BEGIN) == 1
  with pytest.raises(FileNotFoundError, match='only_adaptive_report'):
    evaluation.write_adaptive_section(tmp_path, tmp_path / 'absent.md')


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
