"""Log-log plots and fitted exponents of `flame_overhead` JSON files (docs/scaling.md).

  python -m benchmarks.scaling_plots --inputs=docs/scaling_cnn.json,docs/scaling_100k.json
      --output_dir=docs

For each input (one model size), time (`*_next_s`) and worker peak memory
(`*_peak_mb`) against n for the mean and FLAME in both spaces, and FLAME's
extra cost (FLAME minus mean). Writes scaling_time.png and scaling_memory.png
and prints the exponents b of a least-squares fit y = a n^b in log-log space.
"""

import json
import os

from absl import app
from absl import flags
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

_INPUTS = flags.DEFINE_list('inputs', ['docs/scaling_cnn.json', 'docs/scaling_100k.json'],
                            'flame_overhead --output_json files, one per model size.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'docs', 'Where the PNGs go.')

SERIES = (('mean', 'mean'), ('flame', 'FLAME (updates)'), ('flame_model', 'FLAME (models)'))


def exponent(n: np.ndarray, y: np.ndarray) -> float:
  """b of the least-squares fit log y = log a + b log n (positive y only)."""
  keep = y > 0
  return float(np.polyfit(np.log(n[keep]), np.log(y[keep]), 1)[0])


def series(rows: list, key: str) -> dict:
  """name -> values over n: each variant's `key`, and FLAME's extra over the mean."""
  out = {v: np.array([r[f'{v}_{key}'] for r in rows]) for v, _ in SERIES}
  for v in ('flame', 'flame_model'):
    out[f'{v}_extra'] = out[v] - out['mean']
  return out


def plot(runs: dict, key: str, ylabel: str, path: str) -> None:
  fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
  for ax, (label, rows) in zip(axes[0], runs.items()):
    n = np.array([r['n'] for r in rows], float)
    values = series(rows, key)
    for v, name in SERIES:
      ax.loglog(n, values[v], 'o-', label=f'{name}, b = {exponent(n, values[v]):.2f}')
    for v, name in SERIES[1:]:
      ax.loglog(n, np.maximum(values[f'{v}_extra'], 1e-9), 's--',
                label=f'{name} - mean, b = {exponent(n, values[v + "_extra"]):.2f}')
    ax.set_title(label)
    ax.set_xlabel('clients per round n')
    ax.set_ylabel(ylabel)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv):
  del argv
  runs = {}
  for path in _INPUTS.value:
    with open(path) as f:
      rows = json.load(f)
    runs[f'd = {rows[0]["dim"]:,} floats'] = rows
  plot(runs, 'next_s', '`next` seconds', os.path.join(_OUTPUT_DIR.value, 'scaling_time.png'))
  plot(runs, 'peak_mb', 'worker peak MB', os.path.join(_OUTPUT_DIR.value, 'scaling_memory.png'))
  print('| d | quantity | mean | FLAME | FLAME - mean | models | models - mean |')
  print('|---|---|---|---|---|---|---|')
  for label, rows in runs.items():
    n = np.array([r['n'] for r in rows], float)
    for key, what in (('next_s', 'time'), ('peak_mb', 'memory')):
      s = series(rows, key)
      cells = [exponent(n, s[k]) for k in ('mean', 'flame', 'flame_extra', 'flame_model',
                                           'flame_model_extra')]
      print(f'| {label[4:]} | {what} | ' + ' | '.join(f'{c:.2f}' for c in cells) + ' |')


if __name__ == '__main__':
  app.run(main)
