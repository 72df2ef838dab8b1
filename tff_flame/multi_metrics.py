"""Multi-Metrics (Huang et al., ICCV 2023): score each update by three summed distances, whitened.

Per round, over the finite client updates x_i (`blockwise_ops.finite_rows`),
each client gets a 3-vector of sums over the other finite clients j, as in the
authors' released code (github.com/siquanhuang/Multi-metrics, defense.py):

  cosine:    sum_j (1 - cos(x_i, x_j))^2   (the code squares the cosine distance)
  manhattan: sum_j ||x_i - x_j||_1
  euclidean: sum_j | ||x_i||_2 - ||x_j||_2 |  (the code's "Euclidean": the
             difference of the lengths, as the paper's x_Eul feature)

Its score is sqrt(v_i^T Sigma^-1 v_i), Sigma the covariance (ddof 1) of the
round's vectors: a Mahalanobis length from the origin, not from the mean, so
a low score means small summed distances after whitening ("dynamic
weighting"); the code uses the square, the same ranking. The floor(p * m)
lowest-score clients (at least one; p = 0.3 as in the code, m the finite
clients) are averaged with equal weights (the code weights them by their
number of samples; an unweighted aggregator has none).

Where this departs from the code, and why:
* The code uses the local models w_i (cosine and lengths of w_i); the default
  here is the updates, which is what a TFF aggregator receives. With the
  global model (`metric_space='model'`) the cosine and length terms are of
  the local models G - delta_i (from the Gram matrix, as FLAME's model
  space); the Manhattan term is the same in both spaces.
* Sigma^-1: the code's `np.linalg.inv` fails when Sigma is singular (n <= 3,
  duplicates, or a term equal for all clients, e.g. n = 2). Here the vectors
  are divided by each term's standard deviation, terms that do not vary
  (std <= 1e-12 * max |term|) are left out, and the correlation matrix's
  eigen-directions with eigenvalue <= 1e-9 are left out: the same score as
  the code's wherever Sigma is invertible.
* A zero update has cosine distance 1 to every other (the code divides by 0).

Memory and cost: the cosine and length terms come from the block-wise Gram
matrix (one pass over column slices, `blockwise_ops.gram_and_norms`); the
Manhattan sums come from a second pass that sorts each column of a [n, w]
slice (`feature_ops.manhattan_distance_sums`): O(n log n * d) work and
[w, n] temporaries, never the n^2 * d pairwise differences or an [n, n, w]
tensor.
"""

import collections
from typing import Optional

import tensorflow as tf

from tff_flame import blockwise_ops
from tff_flame import feature_ops
from tff_flame import flame
from tff_flame import gathered
from tff_flame import stacked_ops

DEFAULT_FRACTION = 0.3  # the authors' code: p = 0.3
METRICS = ('cosine', 'manhattan', 'euclidean')
# Relative tolerances of the generalized inverse in `whitened_scores`.
CONSTANT_TERM_TOLERANCE = 1e-12
EIGENVALUE_TOLERANCE = 1e-9


def whitened_scores(vectors: tf.Tensor) -> tf.Tensor:
  """float64 [m]: sqrt(v_i^T Sigma^-1 v_i) for the rows v_i of `vectors` [m, t].

  Sigma is the rows' covariance (ddof 1). Computed in the correlation basis:
  z = v / std per column; columns that do not vary are left out (z = 0), and
  so are eigen-directions of the correlation matrix with eigenvalue <= 1e-9
  (a generalized inverse); equal to the plain formula when Sigma is
  invertible. Fewer than two rows: every score is 0.
  """
  v = tf.cast(vectors, tf.float64)
  m = tf.shape(v)[0]

  def scores():
    centered = v - tf.reduce_mean(v, axis=0, keepdims=True)
    covariance = tf.matmul(centered, centered, transpose_a=True) / tf.cast(m - 1, tf.float64)
    std = tf.sqrt(tf.maximum(tf.linalg.diag_part(covariance), 0.0))
    varies = std > CONSTANT_TERM_TOLERANCE * tf.reduce_max(tf.abs(v), axis=0)
    inverse_std = tf.where(varies, 1.0 / tf.where(varies, std, 1.0), 0.0)
    z = v * inverse_std
    correlation = covariance * inverse_std[:, tf.newaxis] * inverse_std[tf.newaxis, :]
    # Terms left out get an isolated unit direction, which z (0 there) never reaches.
    correlation = tf.linalg.set_diag(correlation, tf.where(varies, tf.linalg.diag_part(correlation),
                                                           1.0))
    eigenvalues, eigenvectors = tf.linalg.eigh(0.5 * (correlation + tf.transpose(correlation)))
    kept = eigenvalues > EIGENVALUE_TOLERANCE
    inverse = tf.where(kept, 1.0 / tf.where(kept, eigenvalues, 1.0), 0.0)
    projections = tf.matmul(z, eigenvectors)
    return tf.sqrt(tf.reduce_sum(tf.square(projections) * inverse, axis=1))

  return tf.cond(m >= 2, scores, lambda: tf.zeros([m], tf.float64))


def metric_sums(gram: tf.Tensor, manhattan_sums: tf.Tensor) -> tf.Tensor:
  """float64 [m, 3]: (cosine, manhattan, euclidean) sums per row from the rows' [m, m] Gram
  matrix and their Manhattan sums (see the module doc)."""
  gram = tf.cast(gram, tf.float64)
  cosine = tf.reduce_sum(tf.square(stacked_ops.cosine_distances_from_gram(gram)), axis=1)
  norms = stacked_ops.norms_from_gram(gram)
  euclidean = tf.reduce_sum(tf.abs(norms[:, tf.newaxis] - norms[tf.newaxis, :]), axis=1)
  return tf.stack([cosine, tf.cast(manhattan_sums, tf.float64), euclidean], axis=1)


def num_selected(num_finite: tf.Tensor, fraction: float) -> tf.Tensor:
  """max(1, floor(fraction * m)) for m >= 1 finite clients, else 0."""
  m = tf.cast(num_finite, tf.int32)
  wanted = tf.cast(tf.floor(fraction * tf.cast(m, tf.float64)), tf.int32)
  return tf.minimum(tf.maximum(wanted, 1), m)


def multi_metrics_round_blocks(blocks,
                               fraction: float = DEFAULT_FRACTION,
                               global_model: Optional[tf.Tensor] = None,
                               column_slice: int = feature_ops.COLUMN_SLICE):
  """One Multi-Metrics aggregation over the updates held as G row blocks [m_g, d] (float32).

  Args:
    blocks: the gathered blocks (see `GatheredAggregationFactory.server_step`).
    fraction: p, the share of the finite clients kept (lowest scores).
    global_model: None for the updates' cosines and lengths; the [d] global
      model G for the local models' (G - delta_i).
    column_slice: columns per slice of the Manhattan pass.

  Returns:
    (aggregate float32 [d], measurements OrderedDict): the mean of the
    selected updates (ties broken by canonical row order; zeros and
    `fallback = 1` without a finite client). `scores` and `metric_sums`
    ([n, 3], columns `METRICS`) are NaN for non-finite clients, which are
    never scored or admitted.
  """
  n = blockwise_ops.num_rows(blocks)
  gram, norms, products = blockwise_ops.gram_and_norms(blocks, tf.float64, global_model)
  finite = blockwise_ops.finite_rows(blocks, norms)
  if global_model is not None:
    gram = blockwise_ops.model_space_gram(gram, products, global_model)
  index = tf.cast(tf.where(finite)[:, 0], tf.int32)
  m = tf.shape(index)[0]
  with tf.control_dependencies([gram]):  # one pass over the blocks at a time
    manhattan = feature_ops.manhattan_distance_sums(blocks, finite, column_slice)
  finite_gram = tf.gather(tf.gather(gram, index), index, axis=1)
  sums = metric_sums(finite_gram, tf.gather(manhattan, index))
  scores = whitened_scores(sums)
  select = num_selected(m, fraction)
  chosen = tf.gather(index, tf.argsort(scores, stable=True)[:select])
  admitted = tf.scatter_nd(chosen[:, tf.newaxis], tf.ones_like(chosen), [n])
  weights = tf.cast(admitted, tf.float64) / tf.cast(tf.maximum(select, 1), tf.float64)
  with tf.control_dependencies([manhattan]):
    aggregate = tf.cast(blockwise_ops.weighted_sum(blocks, weights), tf.float32)
  nan = tf.constant(float('nan'), tf.float64)
  measurements = collections.OrderedDict(
      num_clients=n,
      num_admitted=select,
      num_non_finite=n - m,
      admitted=admitted,
      scores=tf.tensor_scatter_nd_update(tf.fill([n], nan), index[:, tf.newaxis], scores),
      metric_sums=tf.tensor_scatter_nd_update(tf.fill([n, len(METRICS)], nan),
                                              index[:, tf.newaxis], sums),
      fallback=tf.cast(tf.equal(select, 0), tf.int32),
  )
  return aggregate, measurements


class MultiMetricsFactory(gathered.GatheredAggregationFactory):
  """Multi-Metrics: keeps the `fraction` of clients with the lowest whitened distance sums.

  `create(value_type)` scores the updates (the default); with
  `metric_space='model'` the cosine and length terms are of the local models
  (the authors' code), and `create_gathered(value_type)`'s `next` also takes
  the global model.
  """

  def __init__(self,
               fraction: float = DEFAULT_FRACTION,
               metric_space: str = 'update',
               max_clients: int = 1000,
               num_groups: Optional[int] = None):
    """Args:
      fraction: p in (0, 1], the share of the finite clients averaged (at
        least one).
      metric_space: 'update' or 'model' (needs the global model).
      max_clients: most clients per round (a round with more fails).
      num_groups: the gather's aggregates G; None = `grouped_gather.gather_layout(max_clients)`.
    """
    super().__init__(max_clients=max_clients, num_groups=num_groups)
    if not 0.0 < fraction <= 1.0:
      raise ValueError(f'fraction must be in (0, 1], got {fraction!r}.')
    flame.check_space('metric_space', metric_space)
    self._fraction = float(fraction)
    self._metric_space = metric_space

  @property
  def metric_space(self) -> str:
    return self._metric_space

  @property
  def requires_global_model(self) -> bool:
    return self._metric_space == 'model'

  def initial_state(self):
    return ()

  def server_step(self, state, blocks, global_model):
    aggregate, measurements = multi_metrics_round_blocks(blocks, self._fraction,
                                                         global_model=global_model)
    return state, aggregate, measurements
