"""The server step of FreqFed and Multi-Metrics next to FLAME's, on random gathered blocks.

  python -m benchmarks.newer_defenses_cost [--clients=100] [--dim=1663370] [--repeats=3]
      [--threads=N]

No TFF: the pure TF round functions (`flame_round_blocks`, `freqfed_round_blocks`,
`multi_metrics_round_blocks`), each wrapped in one `tf.function` (a graph, as in
TFF's worker), run in this process on the same G blocks of float32 rows
(G * K of `grouped_gather.gather_layout(n)`, each block with a shuffled `order`,
as the gather delivers them). Rows: a shared direction plus noise, a third of
the clients opposite. Each variant reports its first call (tracing included)
and the median of `--repeats` later calls, the variants taking turns; the
ratio is to FLAME in the same space. This machine is shared and noisy: only
the ratios of one run mean much.
"""

import collections
import os
import statistics

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from benchmarks import measure
from tff_flame import flame
from tff_flame import freqfed
from tff_flame import grouped_gather
from tff_flame import multi_metrics

_CLIENTS = flags.DEFINE_integer('clients', 100, 'n, clients per round.', lower_bound=2)
_DIM = flags.DEFINE_integer('dim', 1_663_370, "d, floats per update (the EMNIST CNN's).",
                            lower_bound=1)
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls after the first (median).',
                                lower_bound=1)
_SPACES = flags.DEFINE_list('spaces', ['update', 'model'], "'update' and/or 'model'.")
_THREADS = flags.DEFINE_integer('threads', None, "TF's intra-op threads (default: TF's choice, "
                                'one per core); 1 is less sensitive to other jobs on the cores.',
                                lower_bound=1)


def random_blocks(n, d, rng):
  """G gathered blocks (OrderedDict rows, order) of n rows; a third of them opposite."""
  direction = rng.standard_normal(d, dtype=np.float32)
  num_groups = int(np.prod(grouped_gather.gather_layout(n)))
  sizes = np.bincount(np.arange(n) % num_groups, minlength=num_groups)
  blocks, row = [], 0
  for size in sizes:
    noise = rng.standard_normal((size, d), dtype=np.float32)
    signs = np.where(np.arange(row, row + size) < n // 3, -1.0, 1.0).astype(np.float32)
    blocks.append(collections.OrderedDict(
        rows=tf.constant(signs[:, None] * direction + 0.5 * noise),
        order=tf.constant(rng.permutation(size).astype(np.int32))))
    row += size
  return blocks


def variants(space):
  """name -> round function of (blocks, global_model) for one space."""
  model = space == 'model'
  seed = tf.constant([0, 0], tf.int64)
  return {
      f'flame ({space})': lambda b, g: flame.flame_round_blocks(
          b, seed, 0.001, global_model=g if model else None,
          distance='cosine' if model else None),
      f'freqfed ({space})': lambda b, g: freqfed.freqfed_round_blocks(
          b, global_model=g if model else None),
      f'multi_metrics ({space})': lambda b, g: multi_metrics.multi_metrics_round_blocks(
          b, global_model=g if model else None),
  }


def main(argv):
  del argv
  if _THREADS.value:
    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(1)
  n, d = _CLIENTS.value, _DIM.value
  rng = np.random.default_rng(0)
  blocks = random_blocks(n, d, rng)
  global_model = tf.constant(rng.standard_normal(d, dtype=np.float32))
  steps = {}
  for space in _SPACES.value:
    for name, fn in variants(space).items():
      steps[name] = tf.function(lambda fn=fn: fn(blocks, global_model))
  threads = _THREADS.value or 'default'
  print(f'n = {n}, d = {d}, G = {len(blocks)} blocks, {os.cpu_count()} CPUs, {threads} TF '
        f'threads; first = first call (tracing included), next = median of {_REPEATS.value} later calls, the variants '
        'taking turns (so that a change in load hits all of them)')
  first = {name: measure.seconds(lambda: step()[0].numpy()) for name, step in steps.items()}
  times = {name: [] for name in steps}
  for _ in range(_REPEATS.value):
    for name, step in steps.items():
      times[name].append(measure.seconds(lambda: step()[0].numpy()))
  print(f"{'variant':<26} {'first s':>8} {'next s':>8} {'/ FLAME':>8} {'admitted':>9}")
  for name, step in steps.items():
    next_s = statistics.median(times[name])
    flame_s = statistics.median(times[f"flame ({name.split('(')[1]}"])
    admitted = int(step()[1]['num_admitted'])
    print(f'{name:<26} {first[name]:>8.2f} {next_s:>8.2f} {next_s / flame_s:>8.2f} '
          f'{admitted:>9}', flush=True)


if __name__ == '__main__':
  app.run(main)
