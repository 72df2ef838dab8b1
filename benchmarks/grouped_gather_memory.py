"""Worker peak memory of gathering n client updates: mean vs reservoir vs grouped gather.

  python -m benchmarks.grouped_gather_memory [--dim=200000] [--clients=40] [--groups=4,8,16]

A prototype measurement, not a test. Each variant runs in a fresh TFF worker
(`tff_flame.tff_worker.local_worker()`), and the worker's peak resident memory (VmHWM) is
read after `--repeats` calls. Every variant ends in a server-side TF
computation that reduces what it gathered to one [d] vector (the sum of the
rows), so all of them return the same small result:

  mean:      tff.federated_mean (the floor: no gather at all);
  reservoir: TFF's UnweightedReservoirSamplingFactory with sample size n (one
             aggregate that concatenates all n rows; the gathering base before issue 9);
  grouped:   grouped_gather with G groups of one stack each (G aggregates, each
             concatenating the clients of one group);
  layout:    grouped_gather with `gather_layout(n)`'s G aggregates of K stacks.

Ratios are against the mean, measured in the same run.
"""

import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from benchmarks import measure
from tff_flame import tff_worker
from tff_flame import grouped_gather

_DIM = flags.DEFINE_integer('dim', 200_000, 'Floats per client update.', lower_bound=1)
_CLIENTS = flags.DEFINE_integer('clients', 40, 'Clients per round.', lower_bound=1)
_GROUPS = flags.DEFINE_list('groups', ['4', '8', '16'], 'Numbers of groups G to measure.')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Calls per variant (after one warm-up).',
                                lower_bound=1)


def _mean_process(value_type):
  @tff.federated_computation(tff.FederatedType(value_type, tff.CLIENTS))
  def run(values):
    return tff.federated_mean(values)
  return run


def _reservoir_process(value_type, n):
  gather = tff.aggregators.UnweightedReservoirSamplingFactory(sample_size=n).create(value_type)
  stacked_type = gather.next.type_signature.result.result.member

  @tff.tensorflow.computation(stacked_type)
  def reduce_rows(stacked):
    return tf.reduce_sum(stacked, axis=0)

  @tff.federated_computation(tff.FederatedType(value_type, tff.CLIENTS))
  def run(values):
    stacked = gather.next(gather.initialize(), values).result
    return tff.federated_map(reduce_rows, stacked)
  return run


def _grouped_process(value_type, num_groups, stacks=1):
  gather = grouped_gather.build_grouped_gather(value_type, num_groups, stacks_per_group=stacks)

  @tff.tensorflow.computation(gather.result_type)
  def reduce_rows(gathered):
    return tf.add_n([tf.reduce_sum(b[grouped_gather.ROWS], axis=0)
                     for b in grouped_gather.blocks_of(gathered)])

  @tff.federated_computation(tff.FederatedType(value_type, tff.CLIENTS))
  def run(values):
    return tff.federated_map(reduce_rows, gather(values))
  return run


def measure_variant(build, values, repeats):
  """(worker peak MB, median seconds per call, result) in a fresh worker."""
  with tff_worker.local_worker():
    computation = build()
    result = computation(values)
    seconds = measure.median_seconds(lambda: computation(values), repeats)
    return measure.worker_peak_mb(), seconds, np.asarray(result)


def main(argv):
  del argv
  n, d = _CLIENTS.value, _DIM.value
  rng = np.random.default_rng(0)
  values = [rng.standard_normal(d, dtype=np.float32) for _ in range(n)]
  expected_sum = np.sum(np.stack(values).astype(np.float64), axis=0)
  value_type = tff.TensorType(np.float32, [d])
  variants = [('mean', lambda: _mean_process(value_type)),
              ('reservoir', lambda: _reservoir_process(value_type, n))]
  for g in sorted({int(x) for x in _GROUPS.value}):
    variants.append((f'grouped G={g}', lambda g=g: _grouped_process(value_type, g)))
  layout = grouped_gather.gather_layout(n)
  variants.append((f'G={layout[0]} K={layout[1]}', lambda: _grouped_process(value_type, *layout)))
  print(f'n = {n} clients, d = {d} floats ({n * d * 4 / 2**20:.0f} MB of updates); '
        f'gather_layout(n) = {layout}')
  print(f"{'variant':>14} {'peak MB':>9} {'/ mean':>7} {'above mean MB':>14} {'s / call':>9}")
  base = None
  for name, build in variants:
    start = time.perf_counter()
    peak, seconds, result = measure_variant(build, values, _REPEATS.value)
    if name == 'mean':
      base = peak
      ok = np.allclose(result, expected_sum / n, rtol=1e-4, atol=1e-5)
    else:
      ok = np.allclose(result, expected_sum, rtol=1e-4, atol=1e-3)
    print(f'{name:>14} {peak:>9.0f} {peak / base:>7.2f} {peak - base:>14.0f} {seconds:>9.2f}'
          f'{"" if ok else "  WRONG RESULT"}  ({time.perf_counter() - start:.0f} s)', flush=True)


if __name__ == '__main__':
  app.run(main)
