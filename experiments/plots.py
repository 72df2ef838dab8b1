"""Figures of a run: MA, BA and the filter's TPR/TNR per round."""

import numpy as np


def pyplot():
  """matplotlib.pyplot with the file-only Agg backend, imported on first use (no display,
  and no matplotlib import for runs that never plot)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_rounds(rows: list, path: str, title: str = '') -> None:
  """PNG of MA and BA per round (and TPR/TNR when the defense filters)."""
  plt = pyplot()
  rounds = [r['round'] for r in rows]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot(rounds, [r['main_accuracy'] for r in rows], marker='o', label='main accuracy (MA)')
  ax.plot(rounds, [r['backdoor_accuracy'] for r in rows], marker='s', label='backdoor accuracy (BA)')
  for key, label in (('tpr', 'filter TPR'), ('tnr', 'filter TNR')):
    if rows and key in rows[0]:
      ax.plot(rounds, [np.nan if r[key] is None else r[key] for r in rows], ls='--',
              label=label)
  ax.set_xlabel('round')
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title)
  ax.legend(loc='best', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
