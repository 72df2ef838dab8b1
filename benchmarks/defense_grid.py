"""Runs {tasks} x {attacks} x {defenses} with fixed seeds and writes a report.

  python -m benchmarks.defense_grid --tasks=digits,nbaiot --attacks=none,constrain_and_scale \
      --defenses=none,flame --output_dir=results/grid

Every cell is one run of the training binary (`python -m experiments.run`) in its
own process, `--processes` at a time, into <output_dir>/<task>/<attack>/<defense>/.
A cell whose summary.json exists is not run again, and a cell cut short
continues from its last checkpoint, so an interrupted grid resumes where it
stopped. `--tff_workers=HOST:PORT,...` runs every cell on those executor
services (one cell at a time). The report is results.csv, report.md (MA/BA per
defense in the paper's shape, TPR/TNR for filtering defenses) and one PNG per
task of BA per round for each defense under the first non-trivial attack.
"""

import concurrent.futures
import csv
import json
import os
import pathlib

from absl import app
from absl import flags
import numpy as np

from benchmarks import training_runs
from experiments import defenses
from experiments import plots

REPO = training_runs.REPO
SHARED_DATA = training_runs.SHARED_DATA
TASK_FLAGS = training_runs.TASK_FLAGS
FILTERING = defenses.FILTERING

_TASKS = flags.DEFINE_list('tasks', ['digits', 'nbaiot'], f'Tasks among {sorted(TASK_FLAGS)}.')
_ATTACKS = flags.DEFINE_list('attacks', ['none', 'constrain_and_scale'], 'Attacks (experiments.run).')
_DEFENSES = flags.DEFINE_list('defenses', ['none', 'flame'], 'Defenses (experiments.run).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for every cell.')
_PROCESSES = flags.DEFINE_integer('processes', 2, 'Cells run at once.', lower_bound=1)
_OUTPUT = flags.DEFINE_string('output_dir', 'results/grid', 'Where cells and the report go.')
_EXTRA = flags.DEFINE_list('extra_flags', [], 'More experiments.run flags for every cell.')
_TFF_WORKERS = flags.DEFINE_string(
    'tff_workers', None, 'HOST:PORT,... of TFF executor services (python -m experiments.worker) '
    "that every cell splits each round's clients over; needs --processes=1 (services shared "
    'by several coordinators at once were not tried).')
_PLOT_ATTACK = flags.DEFINE_string('plot_attack', None, 'Attack whose BA per round is plotted '
                                   '(default: the first attack other than none).')


def cell_dir(output_dir, task, attack, defense) -> pathlib.Path:
  return pathlib.Path(output_dir) / task / attack / defense


def run_cell(output_dir, task, attack, defense, seed, extra) -> tuple:
  """Runs one cell unless it already finished; returns (cell, seconds, status)."""
  out = cell_dir(output_dir, task, attack, defense)
  if (out / 'summary.json').exists():
    return (task, attack, defense), 0.0, 'cached'
  out.mkdir(parents=True, exist_ok=True)
  seconds, code = training_runs.run_training(out, [f'--task={task}', f'--attack={attack}',
                                     f'--defense={defense}', f'--seed={seed}',
                                     f'--output_dir={out}'] + TASK_FLAGS[task] + extra)
  return (task, attack, defense), seconds, 'ok' if code == 0 else f'exit {code}'


def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def collect(output_dir, tasks, attacks, defenses) -> list:
  """One row per finished cell: final MA/BA and TPR/TNR averaged over attack rounds."""
  rows = []
  for task in tasks:
    for attack in attacks:
      for defense in defenses:
        path = cell_dir(output_dir, task, attack, defense) / 'rounds.jsonl'
        summary = path.parent / 'summary.json'
        if not summary.exists():
          continue
        rounds = [json.loads(l) for l in path.read_text().splitlines()]
        attacked = [r for r in rounds if r.get('attacking')]
        rows.append(dict(task=task, attack=attack, defense=defense, rounds=len(rounds),
                         main_accuracy=rounds[-1]['main_accuracy'],
                         backdoor_accuracy=rounds[-1]['backdoor_accuracy'],
                         tpr=_mean([r.get('tpr') for r in attacked]),
                         tnr=_mean([r.get('tnr') for r in attacked or rounds]),
                         seconds=json.loads(summary.read_text())['seconds']))
  return rows


def _fmt(value):
  return '-' if value is None else f'{100 * value:.1f}'


def markdown(rows, defenses) -> str:
  """Per task: one row per attack, MA/BA per defense, TPR/TNR for filtering defenses."""
  lines = []
  for task in dict.fromkeys(r['task'] for r in rows):
    lines += [f'### {task}', '']
    header = ['attack'] + [f'{d} MA / BA' for d in defenses] + [
        f'{d} TPR / TNR' for d in defenses if d in FILTERING]
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for attack in dict.fromkeys(r['attack'] for r in rows if r['task'] == task):
      cells = {r['defense']: r for r in rows if r['task'] == task and r['attack'] == attack}
      row = [attack]
      for d in defenses:
        c = cells.get(d)
        row.append('-' if c is None else f"{_fmt(c['main_accuracy'])} / {_fmt(c['backdoor_accuracy'])}")
      for d in defenses:
        if d in FILTERING:
          c = cells.get(d)
          row.append('-' if c is None else f"{_fmt(c['tpr'])} / {_fmt(c['tnr'])}")
      lines.append('| ' + ' | '.join(row) + ' |')
    lines.append('')
  lines.append('MA, BA: main-task and backdoor accuracy (%) after the last round. TPR, TNR: '
               'malicious updates rejected and benign updates admitted (%), averaged over '
               'attack rounds (TNR over all rounds without attack).')
  return '\n'.join(lines) + '\n'


def plot_backdoor(output_dir, task, attack, defenses, path) -> None:
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for defense in defenses:
    f = cell_dir(output_dir, task, attack, defense) / 'rounds.jsonl'
    if f.exists():
      rounds = [json.loads(l) for l in f.read_text().splitlines()]
      ax.plot([r['round'] for r in rounds], [r['backdoor_accuracy'] for r in rounds],
              marker='o', label=defense)
  ax.set(xlabel='round', ylabel='backdoor accuracy', ylim=(-0.02, 1.02),
         title=f'{task}: BA per round under {attack}')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  unknown = [t for t in _TASKS.value if t not in TASK_FLAGS]
  if unknown:
    raise app.UsageError(f'--tasks: unknown {unknown}; known: {sorted(TASK_FLAGS)}')
  missing = [t for t in _TASKS.value if t in ('nbaiot', 'shakespeare')
             and not SHARED_DATA.exists()]
  if missing:
    raise app.UsageError(f'--tasks={",".join(missing)} needs {SHARED_DATA}, which is absent.')
  extra = list(_EXTRA.value)
  if _TFF_WORKERS.value:
    if _PROCESSES.value != 1:
      raise app.UsageError('--tff_workers needs --processes=1: executor services shared by '
                           'several runs at once were not tried.')
    extra.append(f'--tff_workers={_TFF_WORKERS.value}')
  cells = [(t, a, d) for t in _TASKS.value for a in _ATTACKS.value for d in _DEFENSES.value]
  print(f'{len(cells)} cells, {_PROCESSES.value} at a time -> {_OUTPUT.value}', flush=True)
  with concurrent.futures.ThreadPoolExecutor(_PROCESSES.value) as pool:
    futures = [pool.submit(run_cell, _OUTPUT.value, *c, _SEED.value, extra) for c in cells]
    for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
      cell, seconds, status = future.result()
      print(f'[{i}/{len(cells)}] {"/".join(cell)}: {status} ({seconds:.0f}s)', flush=True)
  rows = collect(_OUTPUT.value, _TASKS.value, _ATTACKS.value, _DEFENSES.value)
  os.makedirs(_OUTPUT.value, exist_ok=True)
  if rows:
    with open(os.path.join(_OUTPUT.value, 'results.csv'), 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  report = markdown(rows, _DEFENSES.value)
  with open(os.path.join(_OUTPUT.value, 'report.md'), 'w') as f:
    f.write(report)
  attack = _PLOT_ATTACK.value or next((a for a in _ATTACKS.value if a != 'none'),
                                      _ATTACKS.value[0])
  for task in _TASKS.value:
    plot_backdoor(_OUTPUT.value, task, attack, _DEFENSES.value,
                  os.path.join(_OUTPUT.value, f'backdoor_{task}_{attack}.png'))
  print(report)


if __name__ == '__main__':
  app.run(main)
