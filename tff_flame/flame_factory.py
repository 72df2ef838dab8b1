"""FLAME (Nguyen et al., USENIX Security 2022) as a TFF aggregation factory."""

import collections
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_flame import clustering
from tff_flame import flame_ops
from tff_flame import gathered_factory


class FlameFactory(gathered_factory.GatheredAggregationFactory):
  """Cluster, clip to the median norm, average, add Gaussian noise.

  Use with `tff.learning.algorithms.build_unweighted_fed_avg(model_aggregator=
  FlameFactory())`, or `FlameFactory().as_weighted()` with
  `build_weighted_fed_avg` (admitted clients are averaged equally).
  """

  def __init__(self,
               noise_lambda: float = 0.001,
               min_cluster_size: Optional[int] = None,
               min_samples: int = 1,
               seed: int = 0,
               max_clients: int = 1000,
               clustering_space: str = 'update'):
    """Args:
      noise_lambda: sigma = noise_lambda * S_t (0.001 image tasks, 0.01 IoT in
        the paper; see `flame_ops.noise_lambda_from_privacy`).
      min_cluster_size: HDBSCAN's minimum cluster size; None = n // 2 + 1.
      min_samples: HDBSCAN's min_samples (the paper's implementation uses 1).
      seed: seeds the noise; the round number is folded in through the state.
      max_clients: most clients per round (the server gathers them all).
      clustering_space: 'update' clusters the updates delta_i (what a TFF
        aggregator receives); 'model' clusters the local models G - delta_i
        and needs the global model: use `create_with_reference` or
        `tff_flame.learning.build_flame_fed_avg`.
    """
    super().__init__(max_clients=max_clients)
    if not noise_lambda >= 0:
      raise ValueError(f'noise_lambda must be >= 0, got {noise_lambda!r}.')
    if min_cluster_size is not None and (not isinstance(min_cluster_size, int) or
                                         min_cluster_size < 2):
      raise ValueError(f'min_cluster_size must be None or an int >= 2, got {min_cluster_size!r}.')
    if not isinstance(min_samples, int) or min_samples < 1:
      raise ValueError(f'min_samples must be an int >= 1, got {min_samples!r}.')
    if clustering_space not in flame_ops.CLUSTERING_SPACES:
      raise ValueError(f'clustering_space must be one of {flame_ops.CLUSTERING_SPACES}, '
                       f'got {clustering_space!r}.')
    self._noise_lambda = float(noise_lambda)
    self._min_cluster_size = min_cluster_size
    self._min_samples = min_samples
    self._seed = int(seed)
    self._clustering_space = clustering_space

  @property
  def clustering_space(self) -> str:
    return self._clustering_space

  def as_weighted(self) -> tff.aggregators.WeightedAggregationFactory:
    """The same aggregator for `build_weighted_fed_avg`; client weights are ignored."""
    return tff.aggregators.as_weighted_aggregator(self)

  def create(self, value_type) -> tff.templates.AggregationProcess:
    if self._clustering_space == 'model':
      raise ValueError(
          "clustering_space='model' needs the global model, which a plain aggregation "
          'process does not receive: use create_with_reference(value_type) or '
          'tff_flame.learning.build_flame_fed_avg.')
    return super().create(value_type)

  def initial_state(self):
    return collections.OrderedDict(
        seed=tf.constant(self._seed, tf.int64), round_num=tf.constant(0, tf.int64))

  def server_step(self, state, updates, reference=None):
    if self._clustering_space == 'update':
      reference = None
    elif reference is None:
      raise ValueError("clustering_space='model' needs the global model: build the process "
                       'with create_with_reference(value_type).')
    seed = tf.stack([state['seed'], state['round_num']])
    aggregate, measurements = flame_ops.flame_round(
        updates, seed, self._noise_lambda, self._min_cluster_size, self._min_samples,
        reference=reference, labels_fn=clustering.hdbscan_labels)
    new_state = collections.OrderedDict(seed=state['seed'], round_num=state['round_num'] + 1)
    return new_state, aggregate, measurements
