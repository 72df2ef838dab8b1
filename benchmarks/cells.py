"""Cells of the evaluation: what one run is (task, attack, defense, variant, seed), its flags,
its folder, and its metrics once finished; shared by the report's sections."""

import collections
import json
import pathlib
import subprocess

import numpy as np

from benchmarks import training_runs
from experiments import defenses

REPO = training_runs.REPO
TASK_FLAGS = training_runs.TASK_FLAGS  # fashion_mnist: sized for the 2-core machine there

# Defense labels -> flags: every registered defense, with FLAME's two update-space variants
# after it: `flame_bare` is FlameFactory() on updates alone (Euclidean distance), and
# `flame_bare_cosine` the update-space cosine it replaced.
FLAME_VARIANTS = collections.OrderedDict([
    ('flame_bare', ['--defense=flame', '--clustering_space=update']),
    ('flame_bare_cosine', ['--defense=flame', '--clustering_space=update',
                           '--flame_distance=cosine']),
])
DEFENSE_FLAGS = collections.OrderedDict()
for _name in defenses.DEFENSES:
  DEFENSE_FLAGS[_name] = [f'--defense={_name}']
  if _name == 'flame':
    DEFENSE_FLAGS.update(FLAME_VARIANTS)
FILTERING = defenses.FILTERING + tuple(FLAME_VARIANTS)
BASE = 'base'

Cell = collections.namedtuple('Cell', 'task attack defense variant seed')


def variant_name(axis, value) -> str:
  return BASE if axis is None else f'{axis}={value}'


def cell_dir(output_dir, cell: Cell) -> pathlib.Path:
  return (pathlib.Path(output_dir) / cell.task / cell.attack / cell.defense / cell.variant /
          f'seed{cell.seed}')


def cell_flags(cell: Cell, output_dir) -> list:
  """The training binary's flags for the cell; a variant is 'flag=value[,flag=value...]'."""
  variant = [] if cell.variant == BASE else [f'--{v}' for v in cell.variant.split(',')]
  return ([f'--task={cell.task}'] + TASK_FLAGS[cell.task] + variant +
          DEFENSE_FLAGS[cell.defense] +
          [f'--attack={cell.attack}', f'--seed={cell.seed}',
           f'--output_dir={cell_dir(output_dir, cell)}'])


def code_version() -> str:
  out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True,
                       text=True)
  dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=REPO,
                         capture_output=True, text=True).stdout.strip()
  return out.stdout.strip() + ('+local changes' if dirty else '')


def run_cell(output_dir, cell: Cell) -> tuple:
  """Runs the cell unless it finished; returns (seconds, status)."""
  out = cell_dir(output_dir, cell)
  if (out / 'summary.json').exists():
    return 0.0, 'cached'
  out.mkdir(parents=True, exist_ok=True)
  with open(out / 'cell.json', 'w') as f:
    json.dump(dict(flags=cell_flags(cell, output_dir), code=code_version()), f, indent=2)
  seconds, code = training_runs.run_training(out, cell_flags(cell, output_dir))
  return seconds, 'ok' if code == 0 else f'exit {code}'


def read_cell(output_dir, cell: Cell):
  """The cell's metrics, or None while it has not finished."""
  out = cell_dir(output_dir, cell)
  if not (out / 'summary.json').exists():
    return None
  summary = json.loads((out / 'summary.json').read_text())
  rounds = [json.loads(l) for l in (out / 'rounds.jsonl').read_text().splitlines()]
  attacked = [r for r in rounds if r.get('attacking')]
  per_round = summary['config']['clients_per_round']
  half = [r for r in attacked if 2 * r.get('num_malicious', 0) >= per_round]
  meta = json.loads((out / 'cell.json').read_text()) if (out / 'cell.json').exists() else {}
  mean = lambda rows, key: mean_of([r.get(key) for r in rows])
  return dict(
      main_accuracy=rounds[-1]['main_accuracy'], backdoor_accuracy=rounds[-1]['backdoor_accuracy'],
      attack_ba=mean(attacked, 'backdoor_accuracy'), tpr=mean(attacked, 'tpr'),
      tnr=mean(attacked or rounds, 'tnr'), attack_rounds=len(attacked), half_rounds=len(half),
      pretrain_ma=(summary.get('pretrain') or {}).get('main_accuracy'),
      seconds=summary['seconds'], code=meta.get('code'), rounds=rounds)


def mean_of(values):
  values = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
  return float(np.mean(values)) if values else None


def pct(value, std=None) -> str:
  if value is None:
    return '-'
  return f'{100 * value:.1f}' + ('' if std is None else f' ± {100 * std:.1f}')


def over_seeds(results, cell: Cell, key):
  """(mean, std or None, number of seeds) of a metric over the finished seeds 0..2."""
  values = [results[c][key] for c in (cell._replace(seed=s) for s in range(3))
            if results.get(c) and results[c][key] is not None]
  if not values:
    return None, None, 0
  return float(np.mean(values)), (float(np.std(values)) if len(values) > 1 else None), len(values)


def seeded(results, cell, key) -> str:
  mean, std, count = over_seeds(results, cell, key)
  return pct(mean, std) + (f' ({count})' if count > 1 else '')


def save_if_drawn(plt, fig, path, drawn: bool) -> bool:
  """Writes the figure when it holds any data; closes it either way."""
  fig.tight_layout()
  if drawn:
    fig.savefig(path, dpi=90)
  plt.close(fig)
  return drawn


def rates_text(defense: str, tpr, tnr) -> tuple:
  """(TPR, TNR) as report text; '-' for a defense that does not filter."""
  if defense not in FILTERING:
    return '-', '-'
  return pct(tpr), pct(tnr)
