"""FLAME (Nguyen et al., USENIX Security 2022): the round as pure TF functions, and its TFF factory.

Per round, over the n client updates delta_i (TFF's sign: G - W_i): cluster the
local models W_i by cosine distance (or, without the global model, the updates
by Euclidean distance; see `default_distance`) with HDBSCAN (min cluster size
n // 2 + 1) and admit the largest cluster; clip every admitted update to S_t,
the median L2 norm of all finite updates; average; add Gaussian noise with sigma = lambda * S_t. The
functions are unit-tested without TFF and run unchanged inside a
`tff.tensorflow.computation`: `flame_round` on the [n, d] matrix of stacked
updates (the reference), `flame_round_blocks` on the G row blocks the
gathering factory delivers (what `FlameFactory` runs).
"""

import collections
import math
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_flame import blockwise_ops
from tff_flame import clustering
from tff_flame import gathered
from tff_flame import stacked_ops

CLUSTERING_SPACES = ('update', 'model')
DISTANCES = ('cosine', 'euclidean')


def default_distance(clustering_space: str) -> str:
  """The paper's cosine between local models; Euclidean between updates alone.

  Cosine between updates discards their length, so boosted updates look
  benign; Euclidean distance between updates (= between the local models)
  keeps it, and matched model-space FLAME's filtering in the measured runs
  (docs/design.md, "What the bare path loses").
  """
  return 'cosine' if clustering_space == 'model' else 'euclidean'


def check_distance(distance: str) -> None:
  if distance not in DISTANCES:
    raise ValueError(f'distance must be one of {DISTANCES}, got {distance!r}.')


def resolve_distance(distance: Optional[str], clustering_space: str) -> str:
  """`distance`, or the space's `default_distance` when None; ValueError if unknown."""
  distance = distance or default_distance(clustering_space)
  check_distance(distance)
  return distance


def noise_lambda_from_privacy(epsilon: float, delta: float) -> float:
  """lambda = (1 / epsilon) * sqrt(2 ln(1.25 / delta)), the paper's Gaussian-mechanism rule."""
  if not epsilon > 0:
    raise ValueError(f'epsilon must be > 0, got {epsilon}.')
  if not 0 < delta < 1:
    raise ValueError(f'delta must be in (0, 1), got {delta}.')
  return (1.0 / epsilon) * math.sqrt(2.0 * math.log(1.25 / delta))


def default_min_cluster_size(num_clients: tf.Tensor) -> tf.Tensor:
  """n // 2 + 1: the admitted cluster must be a majority of the clients."""
  return num_clients // 2 + 1


def cluster_from_distances(distances: tf.Tensor, finite: tf.Tensor,
                           min_cluster_size: tf.Tensor, min_samples: int = 1,
                           labels_fn=clustering.hdbscan_labels):
  """HDBSCAN labels of the finite rows from the [n, n] distances; -1 for the others.

  Returns (labels [n], admitted [n] bool). Admitted clients are the largest
  cluster (lowest id on a tie). With a single client nothing can be compared,
  so a finite lone client is admitted. Fewer finite clients than
  min_cluster_size admit nobody. Only the finite rows and columns of
  `distances` are read.
  """
  n = tf.shape(distances)[0]
  finite_index = tf.cast(tf.where(finite)[:, 0], tf.int32)
  num_finite = tf.shape(finite_index)[0]

  def clustered():
    finite_distances = tf.gather(tf.gather(distances, finite_index), finite_index, axis=1)
    labels = labels_fn(finite_distances, min_cluster_size, min_samples)
    return tf.scatter_nd(finite_index[:, tf.newaxis], labels + 1, [n]) - 1

  enough = (num_finite >= 2) & (num_finite >= min_cluster_size)
  labels = tf.cond(enough, clustered, lambda: -tf.ones([n], tf.int32))
  labels = tf.where((n == 1) & finite, 0, labels)
  counts = tf.math.bincount(tf.maximum(labels, 0), weights=tf.cast(labels >= 0, tf.int32),
                            minlength=1, dtype=tf.int32)
  largest = tf.cast(tf.argmax(counts), tf.int32)
  admitted = (labels >= 0) & tf.equal(labels, largest)
  return labels, admitted


def cluster_clients(points: tf.Tensor, finite: tf.Tensor, min_cluster_size: tf.Tensor,
                    min_samples: int = 1, labels_fn=clustering.hdbscan_labels,
                    distance: str = 'cosine'):
  """`cluster_from_distances` on the cosine (or Euclidean) distances of the [n, d] points."""
  check_distance(distance)
  distances = (stacked_ops.cosine_distances(points) if distance == 'cosine' else
               tf.sqrt(stacked_ops.squared_distances(points)))
  return cluster_from_distances(distances, finite, min_cluster_size, min_samples, labels_fn)


def _noised_round(mean, fallback, noise_seed, noise_lambda, bound, n, finite, admitted, labels,
                  norms):
  """The round's result, mean + N(0, (lambda * S_t)^2) (zeros on fallback), and measurements."""
  sigma = tf.cast(noise_lambda, tf.float64) * bound
  noise = tf.random.stateless_normal(tf.shape(mean), seed=noise_seed, dtype=tf.float64) * sigma
  aggregate = tf.where(fallback, tf.zeros_like(mean), mean + tf.cast(noise, mean.dtype))
  measurements = collections.OrderedDict(
      num_clients=n,
      num_admitted=tf.reduce_sum(tf.cast(admitted, tf.int32)),
      num_non_finite=n - tf.reduce_sum(tf.cast(finite, tf.int32)),
      admitted=tf.cast(admitted, tf.int32),
      cluster_labels=labels,
      update_norms=norms,
      clipping_bound=bound,
      noise_stddev=tf.where(fallback, tf.constant(0.0, tf.float64), sigma),
      fallback=tf.cast(fallback, tf.int32),
  )
  return aggregate, measurements


def flame_round(updates: tf.Tensor,
                noise_seed: tf.Tensor,
                noise_lambda: float,
                min_cluster_size: Optional[tf.Tensor] = None,
                min_samples: int = 1,
                global_model: Optional[tf.Tensor] = None,
                labels_fn=clustering.hdbscan_labels,
                distance: Optional[str] = None):
  """One FLAME aggregation over stacked client updates.

  Args:
    updates: [n, d] float client updates delta_i (TFF's G - W_i).
    noise_seed: int [2] seed for `tf.random.stateless_normal`.
    noise_lambda: noise multiplier; sigma = noise_lambda * S_t.
    min_cluster_size: HDBSCAN's minimum cluster size; default n // 2 + 1.
    min_samples: HDBSCAN's min_samples.
    global_model: None to cluster the updates; the [d] global model G to cluster
      the local models W_i = G - delta_i (the paper's space).
    labels_fn: the clustering implementation (TF ops by default).
    distance: 'cosine' or 'euclidean' between the points; None =
      `default_distance` of the space (cosine between models, Euclidean
      between updates). Euclidean distance is the same in both spaces.

  Returns:
    (aggregate [d] in the updates' dtype, measurements OrderedDict).
  """
  updates = tf.convert_to_tensor(updates)
  n = tf.shape(updates)[0]
  if min_cluster_size is None:
    min_cluster_size = default_min_cluster_size(n)
  min_cluster_size = tf.cast(min_cluster_size, tf.int32)
  finite = stacked_ops.finite_rows(updates)
  safe_updates = tf.where(finite[:, tf.newaxis], updates, tf.zeros_like(updates))
  points = safe_updates if global_model is None else (
      tf.cast(global_model, updates.dtype)[tf.newaxis, :] - safe_updates)
  distance = resolve_distance(distance, 'update' if global_model is None else 'model')
  labels, admitted = cluster_clients(points, finite, min_cluster_size, min_samples, labels_fn,
                                     distance)

  norms = stacked_ops.l2_norms(safe_updates)
  finite_norms = tf.boolean_mask(norms, finite)
  num_admitted = tf.reduce_sum(tf.cast(admitted, tf.int32))
  fallback = tf.equal(num_admitted, 0)
  bound = tf.cond(tf.size(finite_norms) > 0, lambda: stacked_ops.median(finite_norms),
                  lambda: tf.constant(0.0, tf.float64))
  clipped = stacked_ops.clip_rows(safe_updates, norms, bound)
  admitted_f = tf.cast(admitted, updates.dtype)
  total = tf.reduce_sum(clipped * admitted_f[:, tf.newaxis], axis=0)
  mean = total / tf.cast(tf.maximum(num_admitted, 1), updates.dtype)
  return _noised_round(mean, fallback, noise_seed, noise_lambda, bound, n, finite, admitted,
                       labels, norms)


def flame_round_blocks(blocks,
                       noise_seed: tf.Tensor,
                       noise_lambda: float,
                       min_cluster_size: Optional[tf.Tensor] = None,
                       min_samples: int = 1,
                       global_model: Optional[tf.Tensor] = None,
                       labels_fn=clustering.hdbscan_labels,
                       distance: Optional[str] = None):
  """`flame_round` on the updates held as G row blocks [m_g, d] (float32), never as [n, d].

  The same round as `flame_round` on the concatenated blocks (same admitted
  set, S_t and aggregate up to float rounding): distances come from the Gram
  matrix, built with the float64 norms in one pass over column slices (in
  model space from it and <G, delta_i>), and the clipped sum is taken block
  by block (`blockwise_ops`). Norms and Gram entries cannot overflow, and a client
  whose norm exceeds float32's max (e.g. all entries 3e38) is treated like a
  NaN client: never clustered, admitted or counted in S_t.
  """
  n = blockwise_ops.num_rows(blocks)
  if min_cluster_size is None:
    min_cluster_size = default_min_cluster_size(n)
  min_cluster_size = tf.cast(min_cluster_size, tf.int32)
  distance = resolve_distance(distance, 'update' if global_model is None else 'model')
  # One pass over the data for the norms, the Gram matrix and, in model space,
  # <G, delta_i>; ||W_i - W_j|| = ||delta_i - delta_j||: Euclidean needs no G.
  reference = global_model if distance == 'cosine' else None
  gram, norms, products = blockwise_ops.gram_and_norms(blocks, tf.float32, reference)
  finite = blockwise_ops.finite_rows(blocks, norms)
  if distance == 'cosine':
    if reference is not None:
      gram = blockwise_ops.model_space_gram(gram, products, reference)
    distances = stacked_ops.cosine_distances_from_gram(gram)
  else:
    distances = tf.sqrt(blockwise_ops.squared_distances_from_gram(gram))
  labels, admitted = cluster_from_distances(distances, finite, min_cluster_size, min_samples,
                                            labels_fn)
  norms = tf.where(finite, norms, tf.zeros_like(norms))  # as flame_round's zeroed rows
  finite_norms = tf.boolean_mask(norms, finite)
  num_admitted = tf.reduce_sum(tf.cast(admitted, tf.int32))
  fallback = tf.equal(num_admitted, 0)
  bound = tf.cond(tf.size(finite_norms) > 0, lambda: stacked_ops.median(finite_norms),
                  lambda: tf.constant(0.0, tf.float64))
  with tf.control_dependencies([gram]):  # the Gram pass first, then the sum pass
    total = blockwise_ops.clipped_masked_sum(blocks, norms, bound, admitted)
  mean = tf.cast(total / tf.cast(tf.maximum(num_admitted, 1), tf.float64), tf.float32)
  return _noised_round(mean, fallback, noise_seed, noise_lambda, bound, n, finite, admitted,
                       labels, norms)


class FlameFactory(gathered.GatheredAggregationFactory):
  """Cluster, clip to the median norm, average, add Gaussian noise.

  Use with `tff.learning.algorithms.build_unweighted_fed_avg(model_aggregator=
  FlameFactory())`, or `FlameFactory().as_weighted()` with
  `build_weighted_fed_avg` (admitted clients are averaged equally). In the
  paper's model space (`clustering_space='model'`) it needs the global model:
  use `tff_flame.build_flame_fed_avg`, or `create_gathered(value_type)` whose
  `next` also takes it.
  """

  def __init__(self,
               noise_lambda: float = 0.001,
               min_cluster_size: Optional[int] = None,
               min_samples: int = 1,
               seed: int = 0,
               max_clients: int = 1000,
               clustering_space: str = 'update',
               num_groups: Optional[int] = None,
               distance: Optional[str] = None):
    """Args:
      noise_lambda: sigma = noise_lambda * S_t (0.001 image tasks, 0.01 IoT in
        the paper; see `noise_lambda_from_privacy`).
      min_cluster_size: HDBSCAN's minimum cluster size; None = n // 2 + 1.
      min_samples: HDBSCAN's min_samples (the paper's implementation uses 1).
      seed: seeds the noise; the round number is folded in through the state.
      max_clients: most clients per round (the server gathers them all; a
        round with more fails).
      clustering_space: 'update' clusters the updates delta_i (what a TFF
        aggregator receives); 'model' clusters the local models G - delta_i
        and needs the global model.
      num_groups: the gather's groups G; None = `grouped_gather.num_groups_for(max_clients)`.
      distance: 'cosine' or 'euclidean' for the clustering; None =
        `default_distance(clustering_space)`: the paper's cosine between
        models, Euclidean between updates alone (closest to the paper there).
    """
    super().__init__(max_clients=max_clients, num_groups=num_groups)
    if not noise_lambda >= 0:
      raise ValueError(f'noise_lambda must be >= 0, got {noise_lambda!r}.')
    if min_cluster_size is not None and (not isinstance(min_cluster_size, int) or
                                         min_cluster_size < 2):
      raise ValueError(f'min_cluster_size must be None or an int >= 2, got {min_cluster_size!r}.')
    if not isinstance(min_samples, int) or min_samples < 1:
      raise ValueError(f'min_samples must be an int >= 1, got {min_samples!r}.')
    if clustering_space not in CLUSTERING_SPACES:
      raise ValueError(f'clustering_space must be one of {CLUSTERING_SPACES}, '
                       f'got {clustering_space!r}.')
    self._noise_lambda = float(noise_lambda)
    self._min_cluster_size = min_cluster_size
    self._min_samples = min_samples
    self._seed = int(seed)
    self._clustering_space = clustering_space
    self._distance = resolve_distance(distance, clustering_space)

  @property
  def clustering_space(self) -> str:
    return self._clustering_space

  @property
  def distance(self) -> str:
    return self._distance

  @property
  def requires_global_model(self) -> bool:
    # Euclidean distances between models equal those between updates.
    return self._clustering_space == 'model' and self._distance == 'cosine'

  def as_weighted(self) -> tff.aggregators.WeightedAggregationFactory:
    """The same aggregator for `build_weighted_fed_avg`; client weights are ignored."""
    return tff.aggregators.as_weighted_aggregator(self)

  def initial_state(self):
    return collections.OrderedDict(
        seed=tf.constant(self._seed, tf.int64), round_num=tf.constant(0, tf.int64))

  def server_step(self, state, blocks, global_model):
    seed = tf.stack([state['seed'], state['round_num']])
    aggregate, measurements = flame_round_blocks(
        blocks, seed, self._noise_lambda, self._min_cluster_size, self._min_samples,
        global_model=global_model, labels_fn=clustering.hdbscan_labels, distance=self._distance)
    new_state = collections.OrderedDict(seed=state['seed'], round_num=state['round_num'] + 1)
    return new_state, aggregate, measurements
