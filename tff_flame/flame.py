"""FLAME (Nguyen et al., USENIX Security 2022): the round as pure TF functions, and its TFF factory.

Per round, over the n client updates delta_i (TFF's sign: G - W_i): cluster the
local models W_i by cosine distance (or, without the global model, the updates
by Euclidean distance; see `default_distance`) with HDBSCAN (min cluster size
n // 2 + 1) and admit the largest cluster; clip every admitted update to S_t,
the median L2 norm of all finite updates; average; add Gaussian noise with
sigma = lambda * S_t. `flame_round_blocks` runs the round on the G row blocks
the gathering factory delivers (what `FlameFactory` runs), as its steps:
`client_distances`, `cluster_from_distances`, `clipping_bound`,
`clipped_mean`, `add_noise`, `flame_measurements`. They are unit-tested
without TFF and run unchanged inside a `tff.tensorflow.computation`.
"""

import collections
import math
from typing import Optional

import tensorflow as tf

from tff_flame import blockwise_ops
from tff_flame import clustering
from tff_flame import gathered
from tff_flame import measurements as measurements_lib
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


def check_clustering(min_cluster_size: Optional[int], min_samples: int) -> None:
  """HDBSCAN's arguments as FLAME and FreqFed take them; ValueError names the bad one."""
  if min_cluster_size is not None and (not isinstance(min_cluster_size, int) or
                                       min_cluster_size < 2):
    raise ValueError(f'min_cluster_size must be None or an int >= 2, got {min_cluster_size!r}.')
  if not isinstance(min_samples, int) or min_samples < 1:
    raise ValueError(f'min_samples must be an int >= 1, got {min_samples!r}.')


def check_space(name: str, space: str) -> None:
  """`space` must be one of CLUSTERING_SPACES; ValueError names the argument `name`."""
  if space not in CLUSTERING_SPACES:
    raise ValueError(f'{name} must be one of {CLUSTERING_SPACES}, got {space!r}.')


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
                           labels_fn=clustering.hdbscan_labels) -> tuple:
  """HDBSCAN labels of the finite rows from the [n, n] distances; -1 for the others.

  Returns (labels [n], admitted [n] bool). Admitted clients are the largest
  cluster (lowest id on a tie). With a single client nothing can be compared,
  so a finite lone client is admitted. Fewer finite clients than
  min_cluster_size admit nobody. Only the finite rows and columns of
  `distances` are read.
  """
  n = tf.shape(distances)[0]
  finite_index = stacked_ops.true_indices(finite)
  num_finite = tf.shape(finite_index)[0]

  def clustered():
    labels = labels_fn(stacked_ops.submatrix(distances, finite_index), min_cluster_size,
                       min_samples)
    return stacked_ops.scatter_to_clients(labels, finite_index, n, fill=-1)

  enough = (num_finite >= 2) & (num_finite >= min_cluster_size)
  labels = tf.cond(enough, clustered, lambda: -tf.ones([n], tf.int32))
  labels = tf.where((n == 1) & finite, 0, labels)
  counts = tf.math.bincount(tf.maximum(labels, 0), weights=tf.cast(labels >= 0, tf.int32),
                            minlength=1, dtype=tf.int32)
  largest = tf.cast(tf.argmax(counts), tf.int32)
  admitted = (labels >= 0) & tf.equal(labels, largest)
  return labels, admitted


def distances_from_gram(gram: tf.Tensor, distance: str) -> tf.Tensor:
  """float64 [n, n] cosine or Euclidean distances between the rows of a Gram matrix."""
  check_distance(distance)
  if distance == 'cosine':
    return stacked_ops.cosine_distances_from_gram(gram)
  return tf.sqrt(blockwise_ops.squared_distances_from_gram(gram))


def client_geometry(blocks, distance: str, global_model: Optional[tf.Tensor] = None) -> tuple:
  """(distances [n, n], update Gram [n, n], norms [n], finite [n]), in one pass over the blocks.

  Distances are between the updates, or with `global_model` and cosine between
  the local models G - delta_i (Euclidean distance is the same in both
  spaces, so it needs no G); the Gram matrix is always the updates'. Norms
  are the updates' float64 L2 norms, 0 for a client that is not finite (NaN,
  Inf, or a norm above float32's max; see `blockwise_ops.finite_rows`); the
  distances and Gram entries of such a client are not to be read.
  """
  reference = global_model if distance == 'cosine' else None
  gram, norms, products = blockwise_ops.gram_and_norms(blocks, tf.float32, reference)
  finite = blockwise_ops.finite_rows(blocks, norms)
  points_gram = (gram if reference is None else
                 blockwise_ops.model_space_gram(gram, products, reference))
  norms = tf.where(finite, norms, tf.zeros_like(norms))
  return distances_from_gram(points_gram, distance), gram, norms, finite


def client_distances(blocks, distance: str,
                     global_model: Optional[tf.Tensor] = None) -> tuple:
  """(distances [n, n], norms [n], finite [n]): `client_geometry` without the Gram matrix."""
  distances, _, norms, finite = client_geometry(blocks, distance, global_model)
  return distances, norms, finite


def clipping_bound(norms: tf.Tensor, finite: tf.Tensor) -> tf.Tensor:
  """S_t: the median of the finite clients' float64 norms; 0 when no client is finite."""
  finite_norms = tf.boolean_mask(norms, finite)
  return tf.cond(tf.size(finite_norms) > 0, lambda: stacked_ops.median(finite_norms),
                 lambda: tf.constant(0.0, tf.float64))


def clipped_mean(blocks, norms: tf.Tensor, bound: tf.Tensor, admitted: tf.Tensor) -> tf.Tensor:
  """float32 [d]: the mean of the admitted updates, each scaled by min(1, S_t / norm); 0 if none."""
  total = blockwise_ops.clipped_masked_sum(blocks, norms, bound, admitted)
  num_admitted = tf.reduce_sum(tf.cast(admitted, tf.float64))
  return tf.cast(tf.math.divide_no_nan(total, num_admitted), tf.float32)


def add_noise(mean: tf.Tensor, bound: tf.Tensor, noise_lambda: float, noise_seed: tf.Tensor,
              fallback: tf.Tensor) -> tuple:
  """(mean + N(0, sigma^2) per coordinate, sigma) with sigma = lambda * S_t; (0, 0) on fallback.

  The noise is drawn in float64 by `tf.random.stateless_normal` from `noise_seed` (int [2]).
  """
  sigma = tf.cast(noise_lambda, tf.float64) * bound
  noise = tf.random.stateless_normal(tf.shape(mean), seed=noise_seed, dtype=tf.float64) * sigma
  aggregate = tf.where(fallback, tf.zeros_like(mean), mean + tf.cast(noise, mean.dtype))
  return aggregate, tf.where(fallback, tf.constant(0.0, tf.float64), sigma)


def flame_measurements(finite: tf.Tensor, admitted: tf.Tensor, labels: tf.Tensor,
                       norms: tf.Tensor, bound: tf.Tensor, sigma: tf.Tensor,
                       fallback: tf.Tensor) -> collections.OrderedDict:
  """FLAME's measurements: the common ones, then cluster_labels, update_norms,
  clipping_bound (S_t), noise_stddev (sigma) and fallback (0/1)."""
  return measurements_lib.admission_measurements(
      finite, admitted, cluster_labels=labels, update_norms=norms, clipping_bound=bound,
      noise_stddev=sigma, fallback=tf.cast(fallback, tf.int32))


def flame_round_blocks(blocks,
                       noise_seed: tf.Tensor,
                       noise_lambda: float,
                       min_cluster_size: Optional[tf.Tensor] = None,
                       min_samples: int = 1,
                       global_model: Optional[tf.Tensor] = None,
                       labels_fn=clustering.hdbscan_labels,
                       distance: Optional[str] = None) -> tuple:
  """One FLAME round on the updates held as G row blocks [m_g, d] (float32), never as [n, d].

  Args:
    blocks: the updates delta_i (TFF's G - W_i) as row blocks (`blockwise_ops`).
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
    (aggregate float32 [d], `flame_measurements`).

  Distances come from the Gram matrix, built with the float64 norms in one
  pass over column slices (in model space from it and <G, delta_i>), and the
  clipped sum is taken block by block (`blockwise_ops`). Norms and Gram
  entries cannot overflow, and a client whose norm exceeds float32's max
  (e.g. all entries 3e38) is treated like a NaN client: never clustered,
  admitted or counted in S_t.
  """
  n = blockwise_ops.num_rows(blocks)
  if min_cluster_size is None:
    min_cluster_size = default_min_cluster_size(n)
  min_cluster_size = tf.cast(min_cluster_size, tf.int32)
  distance = resolve_distance(distance, 'update' if global_model is None else 'model')
  distances, norms, finite = client_distances(blocks, distance, global_model)
  labels, admitted = cluster_from_distances(distances, finite, min_cluster_size, min_samples,
                                            labels_fn)
  bound = clipping_bound(norms, finite)
  with tf.control_dependencies([distances]):  # the Gram pass first, then the sum pass
    mean = clipped_mean(blocks, norms, bound, admitted)
  fallback = tf.logical_not(tf.reduce_any(admitted))
  aggregate, sigma = add_noise(mean, bound, noise_lambda, noise_seed, fallback)
  return aggregate, flame_measurements(finite, admitted, labels, norms, bound, sigma, fallback)


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
               distance: Optional[str] = None,
               stacks_per_group: Optional[int] = None):
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
      num_groups: the gather's aggregates G; None = `grouped_gather.gather_layout(max_clients)`.
      distance: 'cosine' or 'euclidean' for the clustering; None =
        `default_distance(clustering_space)`: the paper's cosine between
        models, Euclidean between updates alone (closest to the paper there).
      stacks_per_group: the gather's row stacks K per aggregate (see
        `gathered.GatheredAggregationFactory`).
    """
    super().__init__(max_clients=max_clients, num_groups=num_groups,
                     stacks_per_group=stacks_per_group)
    if not noise_lambda >= 0:
      raise ValueError(f'noise_lambda must be >= 0, got {noise_lambda!r}.')
    check_clustering(min_cluster_size, min_samples)
    check_space('clustering_space', clustering_space)
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

  def initial_state(self):
    return collections.OrderedDict(
        seed=tf.constant(self._seed, tf.int64), round_num=tf.constant(0, tf.int64))

  def round_blocks(self, blocks, noise_seed: tf.Tensor, global_model) -> tuple:
    """(aggregate, measurements) of one round; a variant of FLAME overrides this."""
    return flame_round_blocks(
        blocks, noise_seed, self._noise_lambda, self._min_cluster_size, self._min_samples,
        global_model=global_model, labels_fn=clustering.hdbscan_labels, distance=self._distance)

  def server_step(self, state, blocks, global_model):
    seed = tf.stack([state['seed'], state['round_num']])
    aggregate, measurements = self.round_blocks(blocks, seed, global_model)
    new_state = collections.OrderedDict(seed=state['seed'], round_num=state['round_num'] + 1)
    return new_state, aggregate, measurements
