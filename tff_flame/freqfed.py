"""FreqFed (Fereidooni et al., NDSS 2024): cluster low-frequency DCT features, average the majority.

Per round, over the n client updates delta_i (TFF's sign: G - W_i): take the
low-frequency DCT-II coefficients of each update (or, with the global model,
of each local model W_i = G - delta_i, the paper's space), cluster them by
cosine distance with HDBSCAN (min cluster size n // 2 + 1, FLAME's rule), and
average the updates of the largest cluster with equal weights. No clipping,
no noise.

What the low frequencies are here (`feature_ops.low_frequency_dct`): as the
paper's public re-implementations do (the authors' code is not public), an
orthonormal DCT-II of a weight matrix, keeping the top-left triangle
i + j <= floor(P / 2) of the coefficients. A TFF aggregator
sees each update as one flattened row of d floats, so the row is read as ONE
P x P matrix (P = ceil(sqrt(d)), zero-padded, row-major over the value's
leaves in order), not one matrix per layer: one transform for any model,
k = (h + 1)(h + 2) / 2 features with h = floor(P / 2), about d / 8
(208,981 for the 1.66 M-float EMNIST CNN, P = 1290). The transform is
linear, so in model space the local models' features are F(G) - F(delta_i), and their
Gram matrix comes from the updates' features and <F(G), F(delta_i)> without
forming G - delta_i (`blockwise_ops.model_space_gram`), as FLAME does.

Memory: the features are computed a few rows at a time (`feature_ops.map_rows`)
from the gathered blocks and kept as one [n, k] float32 matrix (84 MB at
n = 100 for that CNN, an eighth of the updates); every row is scaled to
norm 1 before its DCT (cosines do not change; no coefficient can overflow),
and the scale is put back in float64 where model space needs it.
"""

import collections
from typing import Optional

import tensorflow as tf

from tff_flame import blockwise_ops
from tff_flame import clustering
from tff_flame import feature_ops
from tff_flame import flame
from tff_flame import gathered
from tff_flame import stacked_ops


def _feature_gram(features: tf.Tensor, inverse_scales: tf.Tensor,
                  global_model: Optional[tf.Tensor]) -> tf.Tensor:
  """float64 [n, n] Gram matrix of the updates' (or the local models') low-frequency features.

  `features` are the features of the unit-norm rows; row i's true features
  are features_i * inverse_scales_i. In update space the scale does not
  change cosines and is left out.
  """
  if global_model is None:
    gram, _, _ = blockwise_ops.gram_and_norms([features], tf.float64)
    return gram
  reference = tf.reshape(tf.cast(global_model, tf.float32), [1, -1])
  reference_norm = blockwise_ops.l2_norms([reference])
  reference_factors = feature_ops.unit_scale_factors(reference_norm, tf.constant([True]))
  reference_features = feature_ops.low_frequency_dct(
      reference * reference_factors[:, :1] * reference_factors[:, 1:])[0]
  reference_features *= tf.cast(reference_norm[0], tf.float32)  # F(G) itself
  gram, _, products = blockwise_ops.gram_and_norms([features], tf.float64, reference_features)
  gram = gram * inverse_scales[:, tf.newaxis] * inverse_scales[tf.newaxis, :]
  return blockwise_ops.model_space_gram(gram, products * inverse_scales, reference_features)


def low_frequency_distances(blocks, norms: tf.Tensor, finite: tf.Tensor,
                            global_model: Optional[tf.Tensor] = None,
                            chunk_rows: int = feature_ops.CHUNK_ROWS) -> tf.Tensor:
  """float64 [n, n] cosine distances between the rows' low-frequency DCT features.

  `norms` and `finite` are the rows' `blockwise_ops.l2_norms` and
  `finite_rows`; a row that is not finite is transformed as a zero row, so
  only the finite rows' distances mean anything (only they are clustered).
  With `global_model`, the distances are between the local models'
  features F(G) - F(delta_i).
  """
  factors = feature_ops.unit_scale_factors(norms, finite)
  features = feature_ops.low_frequency_features(blocks, factors, chunk_rows)
  product = tf.cast(factors[:, 0], tf.float64) * tf.cast(factors[:, 1], tf.float64)
  inverse_scales = tf.where(product > 0.0, 1.0 / tf.where(product > 0.0, product, 1.0), 0.0)
  return stacked_ops.cosine_distances_from_gram(
      _feature_gram(features, inverse_scales, global_model))


def freqfed_round_blocks(blocks,
                         min_cluster_size: Optional[tf.Tensor] = None,
                         min_samples: int = 1,
                         global_model: Optional[tf.Tensor] = None,
                         labels_fn=clustering.hdbscan_labels,
                         chunk_rows: int = feature_ops.CHUNK_ROWS):
  """One FreqFed aggregation over the updates held as G row blocks [m_g, d] (float32).

  Args:
    blocks: the gathered blocks (see `GatheredAggregationFactory.server_step`).
    min_cluster_size: HDBSCAN's minimum cluster size; default n // 2 + 1.
    min_samples: HDBSCAN's min_samples.
    global_model: None to cluster the updates' features; the [d] global model
      G to cluster the local models' (the paper's space).
    labels_fn: the clustering implementation (TF ops by default).
    chunk_rows: rows transformed at once.

  Returns:
    (aggregate float32 [d], measurements OrderedDict): the mean of the admitted
    updates (zeros and `fallback = 1` when none is admitted). A client with
    NaN or Inf, or whose norm exceeds float32's max (`blockwise_ops.finite_rows`),
    is never clustered or admitted.
  """
  n = blockwise_ops.num_rows(blocks)
  if min_cluster_size is None:
    min_cluster_size = flame.default_min_cluster_size(n)
  min_cluster_size = tf.cast(min_cluster_size, tf.int32)
  norms = blockwise_ops.l2_norms(blocks)
  finite = blockwise_ops.finite_rows(blocks, norms)
  with tf.control_dependencies([norms]):  # one pass over the blocks at a time
    distances = low_frequency_distances(blocks, norms, finite, global_model, chunk_rows)
  labels, admitted = flame.cluster_from_distances(distances, finite, min_cluster_size,
                                                  min_samples, labels_fn)
  num_admitted = tf.reduce_sum(tf.cast(admitted, tf.int32))
  weights = tf.cast(admitted, tf.float64) / tf.cast(tf.maximum(num_admitted, 1), tf.float64)
  with tf.control_dependencies([distances]):  # the feature pass first, then the sum pass
    aggregate = tf.cast(blockwise_ops.weighted_sum(blocks, weights), tf.float32)
  measurements = collections.OrderedDict(
      num_clients=n,
      num_admitted=num_admitted,
      num_non_finite=n - tf.reduce_sum(tf.cast(finite, tf.int32)),
      admitted=tf.cast(admitted, tf.int32),
      cluster_labels=labels,
      fallback=tf.cast(tf.equal(num_admitted, 0), tf.int32),
  )
  return aggregate, measurements


class FreqFedFactory(gathered.GatheredAggregationFactory):
  """FreqFed: HDBSCAN on the low-frequency DCT coefficients, mean of the largest cluster.

  Use like `FlameFactory`: `create(value_type)` in update space (the
  default), or, in the paper's model space (`clustering_space='model'`),
  `create_gathered(value_type)` whose `next` also takes the global model.
  Cosine distance ignores an update's length, so in update space an update
  boosted along the benign direction is admitted (and dominates the mean);
  in model space a boosted update turns the local model away from the others.
  """

  def __init__(self,
               min_cluster_size: Optional[int] = None,
               min_samples: int = 1,
               clustering_space: str = 'update',
               max_clients: int = 1000,
               num_groups: Optional[int] = None):
    """Args:
      min_cluster_size: HDBSCAN's minimum cluster size; None = n // 2 + 1.
      min_samples: HDBSCAN's min_samples.
      clustering_space: 'update' clusters the updates' features; 'model' the
        local models' (G - delta_i) and needs the global model.
      max_clients: most clients per round (a round with more fails).
      num_groups: the gather's aggregates G; None = `grouped_gather.gather_layout(max_clients)`.
    """
    super().__init__(max_clients=max_clients, num_groups=num_groups)
    flame.check_clustering(min_cluster_size, min_samples)
    flame.check_space('clustering_space', clustering_space)
    self._min_cluster_size = min_cluster_size
    self._min_samples = min_samples
    self._clustering_space = clustering_space

  @property
  def clustering_space(self) -> str:
    return self._clustering_space

  @property
  def requires_global_model(self) -> bool:
    return self._clustering_space == 'model'

  def initial_state(self):
    return ()

  def server_step(self, state, blocks, global_model):
    aggregate, measurements = freqfed_round_blocks(
        blocks, self._min_cluster_size, self._min_samples, global_model=global_model)
    return state, aggregate, measurements
