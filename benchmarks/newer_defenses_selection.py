"""How often FLAME, FreqFed and Multi-Metrics admit an attacker in synthetic rounds.

  python -m benchmarks.newer_defenses_selection [--seeds=20] [--clients=20] [--dim=500]

Each round: benign updates direction + 0.8 * noise; a group of attackers of
one kind (boosted: 10x the benign direction, tight or with 10x the noise;
opposite: -direction, tight; other: a shared unrelated direction). For each
defense (the pure TF round functions, each in one `tf.function`), in update
and model space (a random global model), over `--seeds` rounds: the rounds in
which at least one attacker was admitted, and the mean share of benign
clients admitted. Multi-Metrics is also shown with its score centred,
(v - mean)^T Sigma^+ (v - mean), computed here from the round's `metric_sums`
(a comparison, not the paper's rule). No TFF. Synthetic geometry only: it
says which defense's rule holds up in which configuration, not how a trained
model fares.
"""

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from tff_flame import flame
from tff_flame import freqfed
from tff_flame import multi_metrics

_SEEDS = flags.DEFINE_integer('seeds', 20, 'Rounds per configuration.', lower_bound=1)
_CLIENTS = flags.DEFINE_integer('clients', 20, 'n, clients per round.', lower_bound=4)
_DIM = flags.DEFINE_integer('dim', 500, 'd, floats per update.', lower_bound=1)
_ATTACKERS = flags.DEFINE_list('attackers', ['2', '6'], 'Attackers per round to try.')

KINDS = ('boosted_tight', 'boosted_spread', 'opposite', 'other')


def round_rows(rng, n, num_attackers, kind, dim):
  direction = rng.normal(size=dim)
  benign = direction + 0.8 * rng.normal(size=(n - num_attackers, dim))
  shape = (num_attackers, dim)
  bad = {
      'boosted_tight': lambda: 10.0 * direction + 0.1 * rng.normal(size=shape),
      'boosted_spread': lambda: 10.0 * (direction + 0.8 * rng.normal(size=shape)),
      'opposite': lambda: -direction + 0.05 * rng.normal(size=shape),
      'other': lambda: 3.0 * rng.normal(size=dim) + 0.3 * rng.normal(size=shape),
  }[kind]()
  return np.concatenate([benign, bad]).astype(np.float32)


def defenses():
  """name -> tf.function of (rows [n, d], global model [d]) -> admitted [n]."""
  seed = tf.constant([0, 0], tf.int64)
  fns = {
      'flame (update)': lambda x, g: flame.flame_round_blocks([x], seed, 0.0),
      'flame (model)': lambda x, g: flame.flame_round_blocks([x], seed, 0.0, global_model=g),
      'freqfed (update)': lambda x, g: freqfed.freqfed_round_blocks([x]),
      'freqfed (model)': lambda x, g: freqfed.freqfed_round_blocks([x], global_model=g),
      'multi_metrics (update)': lambda x, g: multi_metrics.multi_metrics_round_blocks([x]),
      'multi_metrics (model)': lambda x, g: multi_metrics.multi_metrics_round_blocks(
          [x], global_model=g),
  }
  return {name: tf.function(lambda x, g, fn=fn: fn(x, g)[1]) for name, fn in fns.items()}


def centred_selection(measurements, fraction=multi_metrics.DEFAULT_FRACTION):
  """int [n]: Multi-Metrics' selection with the score centred, (v - mean)^T Sigma^+ (v - mean),
  from the round's `metric_sums` (a comparison only: not the paper's rule)."""
  sums = measurements['metric_sums'].numpy()
  finite = np.flatnonzero(np.isfinite(sums).all(axis=1))
  v = sums[finite]
  centred = v - v.mean(axis=0)
  scores = np.einsum('ij,jk,ik->i', centred, np.linalg.pinv(np.cov(v.T)), centred)
  keep = max(1, int(np.floor(fraction * len(finite))))
  admitted = np.zeros(len(sums), int)
  admitted[finite[np.argsort(scores, kind='stable')[:keep]]] = 1
  return admitted


def main(argv):
  del argv
  n, dim = _CLIENTS.value, _DIM.value
  steps = defenses()
  names = list(steps) + [f'{k}, centred' for k in steps if k.startswith('multi_metrics')]
  print(f'n = {n}, d = {dim}, {_SEEDS.value} rounds per cell; cell = rounds with an attacker '
        'admitted / mean share of benign clients admitted')
  header = '| kind | ' + ' | '.join(names) + ' |\n|---|' + '---|' * len(names)
  for num_attackers in [int(a) for a in _ATTACKERS.value]:
    print(f'\nattackers: {num_attackers} of {n}\n\n{header}')
    for kind in KINDS:
      hits = {name: 0 for name in names}
      benign_share = {name: 0.0 for name in names}
      for seed in range(_SEEDS.value):
        rng = np.random.default_rng(seed)
        rows = tf.constant(round_rows(rng, n, num_attackers, kind, dim))
        global_model = tf.constant(rng.normal(size=dim).astype(np.float32))
        admitted = {}
        for name, step in steps.items():
          measurements = step(rows, global_model)
          admitted[name] = measurements['admitted'].numpy()
          if name.startswith('multi_metrics'):
            admitted[f'{name}, centred'] = centred_selection(measurements)
        for name in names:
          hits[name] += int(admitted[name][n - num_attackers:].any())
          benign_share[name] += admitted[name][:n - num_attackers].mean() / _SEEDS.value
      cells = ' | '.join(f'{hits[k]} / {benign_share[k]:.2f}' for k in names)
      print(f'| {kind} | {cells} |', flush=True)


if __name__ == '__main__':
  app.run(main)
