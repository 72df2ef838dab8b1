"""Robust-aggregation baselines as pure TF functions on stacked updates [n, d].

Krum / Multi-Krum (Blanchard et al. 2017), coordinate-wise median and trimmed
mean (Yin et al. 2018). Rows with NaN or Inf are left out, as in FLAME.
"""

import collections

import tensorflow as tf

from tff_flame import flame_ops


def squared_distances(x: tf.Tensor) -> tf.Tensor:
  """[n, n] float64 squared L2 distances between rows."""
  x = tf.cast(x, tf.float64)
  sq = tf.reduce_sum(tf.square(x), axis=1)
  d = sq[:, tf.newaxis] + sq[tf.newaxis, :] - 2.0 * tf.matmul(x, x, transpose_b=True)
  return tf.linalg.set_diag(tf.maximum(d, 0.0), tf.zeros_like(sq))


def krum_scores(x: tf.Tensor, num_byzantine: int):
  """Krum scores: sum of squared distances to the n - f - 2 nearest other rows.

  Returns (scores [n], neighbours used, assumption_holds) where the
  neighbour count is clamped to [1, n - 1] when n <= 2f + 2 (Krum's
  assumption n > 2f + 2 fails; `assumption_holds` is then False).
  """
  n = tf.shape(x)[0]
  wanted = n - num_byzantine - 2
  k = tf.clip_by_value(wanted, 1, tf.maximum(n - 1, 1))
  d = squared_distances(x)
  # Exclude the row itself: push the diagonal past every real distance.
  d = tf.linalg.set_diag(d, tf.fill([n], tf.constant(float('inf'), tf.float64)))
  nearest = tf.sort(d, axis=1)[:, :k]
  return tf.reduce_sum(nearest, axis=1), k, wanted >= 1


def _finite_subset(updates):
  finite = flame_ops.finite_rows(updates)
  index = tf.cast(tf.where(finite)[:, 0], tf.int32)
  return finite, index, tf.gather(updates, index)


def krum_round(updates: tf.Tensor, num_byzantine: int, num_selected=None):
  """Mean of the `num_selected` lowest-score finite updates (1: Krum; None: n - f)."""
  n = tf.shape(updates)[0]
  finite, index, rows = _finite_subset(updates)
  m = tf.shape(rows)[0]
  scores, k, holds = krum_scores(rows, num_byzantine)
  select = tf.maximum(m - num_byzantine, 1) if num_selected is None else tf.constant(num_selected)
  select = tf.minimum(select, m)
  chosen = tf.argsort(scores, stable=True)[:select]
  aggregate = tf.cond(m > 0, lambda: tf.reduce_mean(tf.gather(rows, chosen), axis=0),
                      lambda: tf.zeros([tf.shape(updates)[1]], updates.dtype))
  chosen_rows = tf.gather(index, chosen)
  admitted = tf.scatter_nd(chosen_rows[:, tf.newaxis], tf.ones_like(chosen_rows), [n])
  all_scores = tf.tensor_scatter_nd_update(
      tf.fill([n], tf.constant(float('nan'), tf.float64)), index[:, tf.newaxis], scores)
  measurements = collections.OrderedDict(
      num_clients=n, num_admitted=tf.reduce_sum(admitted),
      num_non_finite=n - m, admitted=admitted, scores=all_scores,
      neighbours=k, assumption_holds=tf.cast(holds, tf.int32))
  return aggregate, measurements


def trimmed_mean(x: tf.Tensor, trim_fraction: float) -> tf.Tensor:
  """Per-coordinate mean after dropping floor(beta * n) largest and smallest values."""
  n = tf.shape(x)[0]
  cut = tf.cast(tf.floor(trim_fraction * tf.cast(n, tf.float64)), tf.int32)
  return tf.reduce_mean(tf.sort(x, axis=0)[cut:n - cut], axis=0)


def coordinate_round(updates: tf.Tensor, statistic):
  """A per-coordinate statistic over the finite updates; every finite client counts as admitted."""
  n = tf.shape(updates)[0]
  finite, _, rows = _finite_subset(updates)
  m = tf.shape(rows)[0]
  aggregate = tf.cond(m > 0, lambda: statistic(rows),
                      lambda: tf.zeros([tf.shape(updates)[1]], updates.dtype))
  measurements = collections.OrderedDict(
      num_clients=n, num_admitted=m, num_non_finite=n - m, admitted=tf.cast(finite, tf.int32))
  return aggregate, measurements
