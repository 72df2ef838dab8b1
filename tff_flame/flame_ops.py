"""FLAME's server-side round as pure TensorFlow functions on an [n, d] matrix.

Each function works on the client updates stacked into rows (one row per
client, flattened over the whole model) so it can be unit-tested without TFF
and called unchanged inside a `tff.tensorflow.computation`.
"""

import collections
import math
from typing import Optional

import tensorflow as tf

from tff_flame import clustering

CLUSTERING_SPACES = ('update', 'model')


def noise_lambda_from_privacy(epsilon: float, delta: float) -> float:
  """lambda = (1 / epsilon) * sqrt(2 ln(1.25 / delta)), the paper's Gaussian-mechanism rule."""
  if not epsilon > 0:
    raise ValueError(f'epsilon must be > 0, got {epsilon}.')
  if not 0 < delta < 1:
    raise ValueError(f'delta must be in (0, 1), got {delta}.')
  return (1.0 / epsilon) * math.sqrt(2.0 * math.log(1.25 / delta))


def finite_rows(x: tf.Tensor) -> tf.Tensor:
  """bool [n]: rows without NaN or Inf."""
  return tf.reduce_all(tf.math.is_finite(x), axis=1)


def l2_norms(x: tf.Tensor) -> tf.Tensor:
  """L2 norm of each row, in float64."""
  x = tf.cast(x, tf.float64)
  return tf.sqrt(tf.reduce_sum(tf.square(x), axis=1))


def cosine_distances(x: tf.Tensor) -> tf.Tensor:
  """[n, n] float64 matrix of 1 - cos(x_i, x_j), with a zero diagonal.

  A zero row has no direction: its distance to every other row is 1. The
  Gram matrix is computed in the input's dtype (float32 for model updates, to
  keep an [n, d] float64 copy out of memory) and normalised in float64.
  """
  gram = tf.cast(tf.matmul(x, x, transpose_b=True), tf.float64)
  norms = tf.sqrt(tf.maximum(tf.linalg.diag_part(gram), 0.0))
  denom = norms[:, tf.newaxis] * norms[tf.newaxis, :]
  cosine = tf.where(denom > 0.0, gram / tf.where(denom > 0.0, denom, 1.0), 0.0)
  distances = tf.clip_by_value(1.0 - cosine, 0.0, 2.0)
  distances = 0.5 * (distances + tf.transpose(distances))
  return tf.linalg.set_diag(distances, tf.zeros_like(norms))


def median(values: tf.Tensor) -> tf.Tensor:
  """Median along axis 0 (per coordinate for [n, d]), averaging the two middle values
  when n is even, as NumPy."""
  sorted_values = tf.sort(values, axis=0)
  n = tf.shape(values)[0]
  lower = tf.gather(sorted_values, (n - 1) // 2)
  upper = tf.gather(sorted_values, n // 2)
  return (lower + upper) / 2.0


def default_min_cluster_size(num_clients: tf.Tensor) -> tf.Tensor:
  """n // 2 + 1: the admitted cluster must be a majority of the clients."""
  return num_clients // 2 + 1


def cluster_clients(points: tf.Tensor, finite: tf.Tensor, min_cluster_size: tf.Tensor,
                    min_samples: int = 1, labels_fn=clustering.hdbscan_labels):
  """HDBSCAN labels of the finite rows by cosine distance; -1 for the others.

  Returns (labels [n], admitted [n] bool). Admitted clients are the largest
  cluster (lowest id on a tie). With a single client nothing can be compared,
  so a finite lone client is admitted. Fewer finite clients than
  min_cluster_size admit nobody.
  """
  n = tf.shape(points)[0]
  finite_index = tf.cast(tf.where(finite)[:, 0], tf.int32)
  finite_points = tf.gather(points, finite_index)
  num_finite = tf.shape(finite_index)[0]

  def clustered():
    labels = labels_fn(cosine_distances(finite_points), min_cluster_size, min_samples)
    return tf.scatter_nd(finite_index[:, tf.newaxis], labels + 1, [n]) - 1

  enough = (num_finite >= 2) & (num_finite >= min_cluster_size)
  labels = tf.cond(enough, clustered, lambda: -tf.ones([n], tf.int32))
  labels = tf.where((n == 1) & finite, 0, labels)
  counts = tf.math.bincount(tf.maximum(labels, 0), weights=tf.cast(labels >= 0, tf.int32),
                            minlength=1, dtype=tf.int32)
  largest = tf.cast(tf.argmax(counts), tf.int32)
  admitted = (labels >= 0) & tf.equal(labels, largest)
  return labels, admitted


def clip_rows(x: tf.Tensor, norms: tf.Tensor, bound: tf.Tensor) -> tf.Tensor:
  """Scales each row by min(1, bound / norm)."""
  scale = tf.where(norms > bound, bound / tf.where(norms > 0.0, norms, 1.0), 1.0)
  return x * tf.cast(scale, x.dtype)[:, tf.newaxis]


def flame_round(updates: tf.Tensor,
                noise_seed: tf.Tensor,
                noise_lambda: float,
                min_cluster_size: Optional[tf.Tensor] = None,
                min_samples: int = 1,
                reference: Optional[tf.Tensor] = None,
                labels_fn=clustering.hdbscan_labels):
  """One FLAME aggregation over stacked client updates.

  Args:
    updates: [n, d] float client updates delta_i (TFF's G - W_i).
    noise_seed: int [2] seed for `tf.random.stateless_normal`.
    noise_lambda: noise multiplier; sigma = noise_lambda * S_t.
    min_cluster_size: HDBSCAN's minimum cluster size; default n // 2 + 1.
    min_samples: HDBSCAN's min_samples.
    reference: None to cluster the updates; the [d] global model G to cluster
      the local models W_i = G - delta_i (the paper's space).
    labels_fn: the clustering implementation (TF ops by default).

  Returns:
    (aggregate [d] in the updates' dtype, measurements OrderedDict).
  """
  updates = tf.convert_to_tensor(updates)
  n = tf.shape(updates)[0]
  if min_cluster_size is None:
    min_cluster_size = default_min_cluster_size(n)
  min_cluster_size = tf.cast(min_cluster_size, tf.int32)
  finite = finite_rows(updates)
  safe_updates = tf.where(finite[:, tf.newaxis], updates, tf.zeros_like(updates))
  points = safe_updates if reference is None else (
      tf.cast(reference, updates.dtype)[tf.newaxis, :] - safe_updates)
  labels, admitted = cluster_clients(points, finite, min_cluster_size, min_samples, labels_fn)

  norms = l2_norms(safe_updates)
  finite_norms = tf.boolean_mask(norms, finite)
  num_admitted = tf.reduce_sum(tf.cast(admitted, tf.int32))
  fallback = tf.equal(num_admitted, 0)
  bound = tf.cond(tf.size(finite_norms) > 0, lambda: median(finite_norms),
                  lambda: tf.constant(0.0, tf.float64))
  clipped = clip_rows(safe_updates, norms, bound)
  admitted_f = tf.cast(admitted, updates.dtype)
  total = tf.reduce_sum(clipped * admitted_f[:, tf.newaxis], axis=0)
  mean = total / tf.cast(tf.maximum(num_admitted, 1), updates.dtype)
  sigma = tf.cast(noise_lambda, tf.float64) * bound
  noise = tf.random.stateless_normal(tf.shape(mean), seed=noise_seed, dtype=tf.float64) * sigma
  aggregate = tf.where(fallback, tf.zeros_like(mean), mean + tf.cast(noise, updates.dtype))

  measurements = collections.OrderedDict(
      num_clients=n,
      num_admitted=num_admitted,
      num_non_finite=n - tf.reduce_sum(tf.cast(finite, tf.int32)),
      admitted=tf.cast(admitted, tf.int32),
      cluster_labels=labels,
      update_norms=norms,
      clipping_bound=bound,
      noise_stddev=tf.where(fallback, tf.constant(0.0, tf.float64), sigma),
      fallback=tf.cast(fallback, tf.int32),
  )
  return aggregate, measurements
