"""What one `accumulate` call costs in TFF's C++ runtime, against the accumulator's size.

  python -m benchmarks.accumulate_cost [--clients=100] [--sizes_mb=6.6,27,106] [--repeats=3]
      [--variants=scalar,identity,cond,struct,append]

One `tff.federated_aggregate` over n clients whose values are one int32
each, so the clients bring no data; the accumulator (a float32 vector of S
bytes, made by `zero`) is all there is. Accumulate variants:

  identity:  returns the accumulator as it is;
  cond:      tf.cond(client == -1, acc + 1, acc): never true, passes acc on
             (what a client outside a gather group does);
  append:    concatenates one float to the accumulator (a growing accumulator);
  struct:    the accumulator is (vector, count): the vector is passed on, the
             count changes (what a gather stack outside the client's stack does);
  scalar:    an accumulator of one float (the call's fixed cost).

Each variant runs in a fresh TFF worker: seconds per aggregate (median of
`--repeats` after one warm-up call), and the worker's peak resident memory
(VmHWM) above its idle resident memory. If a pass-through copied the
accumulator, time and peak would grow as n * S; if it does not, they stay
near one S whatever n is.
"""

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from benchmarks import measure
from tff_flame import tff_worker

_CLIENTS = flags.DEFINE_integer('clients', 100, 'Clients the aggregate visits.', lower_bound=1)
_SIZES_MB = flags.DEFINE_list('sizes_mb', ['6.6', '27', '106'], 'Accumulator sizes, MB.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls (median).', lower_bound=1)
_VARIANTS = flags.DEFINE_list('variants', ['scalar', 'identity', 'cond', 'struct', 'append'],
                              'Accumulate variants to time (append keeps n vectors alive).')



def build_aggregate(variant: str, num_floats: int):
  """A federated computation aggregating int32@CLIENTS into a float32 vector."""
  size = 1 if variant == 'scalar' else num_floats
  vector_type = tff.TensorType(np.float32, [None])
  if variant == 'struct':
    return build_struct_aggregate(size)

  @tff.tensorflow.computation
  def zero():
    return tf.zeros([size], tf.float32)

  @tff.tensorflow.computation(vector_type, np.int32)
  def accumulate(acc, client):
    if variant == 'append':
      return tf.concat([acc, tf.cast(client, tf.float32)[tf.newaxis]], axis=0)
    if variant == 'cond':
      return tf.cond(tf.equal(client, -1), lambda: acc + 1.0, lambda: acc)
    return acc

  @tff.tensorflow.computation(vector_type, vector_type)
  def merge(a, b):
    return a + b[:1]

  @tff.tensorflow.computation(vector_type)
  def report(acc):
    return acc[:1]

  @tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
  def aggregate(clients):
    return tff.federated_aggregate(clients, zero(), accumulate, merge, report)
  return aggregate


def build_struct_aggregate(size: int):
  """The 'struct' variant: the vector is passed on while the count changes."""
  acc_type = tff.StructWithPythonType([tff.TensorType(np.float32, [None]),
                                       tff.TensorType(np.int32)], tuple)

  @tff.tensorflow.computation
  def zero():
    return tf.zeros([size], tf.float32), tf.constant(0)

  @tff.tensorflow.computation(acc_type, np.int32)
  def accumulate(acc, client):
    return acc[0], acc[1] + tf.minimum(client, 1)

  @tff.tensorflow.computation(acc_type, acc_type)
  def merge(a, b):
    return a[0], a[1] + b[1]

  @tff.tensorflow.computation(acc_type)
  def report(acc):
    return acc[0][:1]

  @tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
  def aggregate(clients):
    return tff.federated_aggregate(clients, zero(), accumulate, merge, report)
  return aggregate


def idle_rss_mb() -> float:
  pids = tff_worker.tff_worker_pids()
  with open(f'/proc/{pids[0]}/status') as f:
    for line in f:
      if line.startswith('VmRSS'):
        return int(line.split()[1]) / 1024
  return float('nan')


def run(variant: str, num_floats: int, n: int, repeats: int) -> tuple:
  """(seconds per aggregate, peak MB above the worker's idle RSS), in a fresh worker."""
  clients = list(range(n))
  with tff_worker.local_worker():
    small = build_aggregate(variant, 1)
    small(clients)  # loads the runtime's fixed memory
    base = idle_rss_mb()
    aggregate = build_aggregate(variant, num_floats)
    seconds = measure.median_seconds(lambda: aggregate(clients), repeats)
    return seconds, measure.worker_peak_mb() - base


def main(argv):
  del argv
  n = _CLIENTS.value
  print(f'{n} clients; s = seconds per aggregate; MB = worker peak above idle')
  variants = _VARIANTS.value
  print(f"{'size MB':>8} " + ' '.join(f'{v + " s":>11} {v + " MB":>11}' for v in variants))
  for size_mb in [float(s) for s in _SIZES_MB.value]:
    num_floats = int(size_mb * 1e6 / 4)
    cells = [run(v, num_floats, n, _REPEATS.value) for v in variants]
    print(f'{size_mb:>8.1f} ' + ' '.join(f'{s:>11.3f} {mb:>11.0f}' for s, mb in cells),
          flush=True)


if __name__ == '__main__':
  app.run(main)
