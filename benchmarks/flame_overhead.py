"""FLAME's cost next to a plain mean, and TF clustering next to the `hdbscan` package.

  python -m benchmarks.flame_overhead [--clients=10,50,100] [--repeats=3]

Prints ratios measured in this one run (machines here are noisy, so only
ratios from the same run are meaningful). Updates have the shape of the
EMNIST CNN's trainable weights (about 1.2 M floats); a third of the clients
push an opposite direction.
"""

import json

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

import hdbscan

from benchmarks import measure
from experiments import tff_worker
from tff_flame import clustering
from tff_flame import flame
from tff_flame import stacked_ops

_CLIENTS = flags.DEFINE_list('clients', ['10', '50', '100'], 'Clients per round to time.')
_CLUSTER_SIZES = flags.DEFINE_list('cluster_sizes', ['10', '50', '100', '200', '500'],
                                   'n for the clustering-only comparison.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repetitions (median reported).',
                                lower_bound=1)
_JSON = flags.DEFINE_string('json', None, 'Also write the numbers to this JSON file.')


def emnist_cnn_value_type():
  from tasks import images  # pylint: disable=g-import-not-at-top
  model = images.create_emnist_cnn()
  leaves = [tff.TensorType(np.float32, w.shape) for w in model.trainable_weights]
  return tff.StructWithPythonType(leaves, list), int(model.count_params())


def package_labels(distances: np.ndarray, min_cluster_size: int) -> np.ndarray:
  """The `hdbscan` package's labels, FLAME's settings."""
  return hdbscan.HDBSCAN(metric='precomputed', min_cluster_size=min_cluster_size, min_samples=1,
                         allow_single_cluster=True).fit(distances).labels_


def client_values(value_type, n, rng):
  shapes = [leaf.shape for leaf in value_type]
  size = sum(int(np.prod(s)) for s in shapes)
  direction = rng.standard_normal(size, dtype=np.float32)
  values = []
  for i in range(n):
    sign = -1.0 if i < n // 3 else 1.0
    flat = sign * direction + 0.5 * rng.standard_normal(size, dtype=np.float32)
    parts = np.split(flat, np.cumsum([int(np.prod(s)) for s in shapes])[:-1])
    values.append([p.reshape(s) for p, s in zip(parts, shapes)])
  return values


def time_next(factory, value_type, values, repeats):
  """(median seconds of `next`, worker peak MB), in a worker of its own."""
  with tff_worker.local_worker():
    process = factory.create(value_type)
    state = process.initialize()
    seconds = measure.median_seconds(lambda: process.next(state, values), repeats)
    return seconds, measure.worker_peak_mb()


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  results = dict(next=[], clustering=[])
  value_type, num_params = emnist_cnn_value_type()
  print(f'update size: {num_params} floats (EMNIST CNN trainable weights)')
  print(f"{'n':>5} {'mean next s':>12} {'FLAME next s':>13} {'FLAME/mean':>11} "
        f"{'mean peak MB':>13} {'FLAME peak MB':>14} {'ratio':>6}")
  for n in [int(c) for c in _CLIENTS.value]:
    need, have = measure.gather_estimate_mb(n, num_params), measure.available_mb()
    if need > 0.8 * have:
      print(f'{n:>5} skipped: gathering {n} updates in TFF\'s runtime needs about '
            f'{need / 1024:.0f} GB, {have / 1024:.0f} GB available')
      results['next'].append(dict(n=n, skipped=True, estimate_mb=need, available_mb=have))
      continue
    values = client_values(value_type, n, rng)
    mean_s, mean_mb = time_next(tff.aggregators.UnweightedMeanFactory(), value_type, values,
                                _REPEATS.value)
    flame_s, flame_mb = time_next(flame.FlameFactory(max_clients=max(n, 1000)),
                                  value_type, values, _REPEATS.value)
    results['next'].append(dict(n=n, mean_s=mean_s, flame_s=flame_s, ratio=flame_s / mean_s,
                                mean_peak_mb=mean_mb, flame_peak_mb=flame_mb))
    print(f'{n:>5} {mean_s:>12.3f} {flame_s:>13.3f} {flame_s / mean_s:>11.2f} '
          f'{mean_mb:>13.0f} {flame_mb:>14.0f} {flame_mb / mean_mb:>6.1f}', flush=True)
    del values

  labels_tf = tf.function(clustering.hdbscan_labels, input_signature=[
      tf.TensorSpec([None, None], tf.float64), tf.TensorSpec([], tf.int32),
      tf.TensorSpec([], tf.int32)])
  print(f"\n{'n':>5} {'TF clustering s':>16} {'hdbscan pkg s':>14} {'TF/pkg':>8} {'same labels':>12}")
  for n in [int(c) for c in _CLUSTER_SIZES.value]:
    x = rng.normal(size=(n, 64)) + np.where(np.arange(n)[:, None] < n // 3, -2.0, 2.0)
    d = stacked_ops.cosine_distances(tf.constant(x)).numpy()
    mcs = n // 2 + 1
    tf_s = measure.median_seconds(lambda: labels_tf(d, mcs, 1).numpy(), _REPEATS.value)
    pkg_s = measure.median_seconds(lambda: package_labels(d, mcs), _REPEATS.value)
    same = np.array_equal(labels_tf(d, mcs, 1).numpy() >= 0,
                          package_labels(d, mcs) >= 0)
    results['clustering'].append(dict(n=n, tf_s=tf_s, package_s=pkg_s, ratio=tf_s / pkg_s,
                                      same_noise_set=bool(same)))
    print(f'{n:>5} {tf_s:>16.4f} {pkg_s:>14.4f} {tf_s / pkg_s:>8.1f} {str(same):>12}')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
