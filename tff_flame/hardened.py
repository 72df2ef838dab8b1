"""A hardened FLAME: FLAME's round after rejecting groups of updates more alike than benign ones.

FLAME's majority cluster forms in the densest region. Attackers who keep their
updates smaller than the benign ones and share one backdoor objective are that
region: FLAME admits all of them and rejects benign clients in their place
(docs/evaluation.md, "Attackers who know the defense"). What still gives them
away is how alike they are: colluding updates point the same way (measured on
fashion_mnist, update-space cosine similarity about 0.5-0.6 between attackers,
0.2 on average and rarely above 0.45 between benign non-IID clients, near 0
between an attacker and a benign client).

So, per round, before FLAME's clustering:

1. **Alike groups.** From the updates' cosine similarities (update space,
   whatever FLAME's clustering space; from the Gram matrix FLAME computes
   anyway), tau = median + `alike_threshold` x MAD (scaled to a standard
   deviation) of the similarities of all pairs of finite clients. A client
   with at least `alike_group` - 1 others above tau belongs to a group of
   `alike_group` or more updates more alike than benign updates are, and is
   rejected. With attackers a minority of the round, the pairs' median and MAD
   are the benign pairs'.
2. **FLAME** on the others: HDBSCAN's majority cluster (min cluster size half
   of them + 1) in FLAME's space, S_t the median norm of all finite clients,
   clipping, mean, noise lambda x S_t: `flame.flame_round_blocks`' steps.

What it costs an attacker who knows it: to pass step 1 the attackers must be
no more alike than benign pairs, e.g. by adding noise that differs between
them (3DFed's masks); the noise spends the norm budget that clipping bounds,
and step 2 still bounds what passes. What it does not catch: a lone attacker,
or attackers whose updates are no more alike than benign ones.
"""

from typing import Optional

import tensorflow as tf

from tff_flame import clustering
from tff_flame import flame
from tff_flame import stacked_ops

MAD_TO_STD = 1.4826  # MAD x this estimates a normal standard deviation


def pair_similarity_threshold(similarity: tf.Tensor, finite: tf.Tensor,
                              alike_threshold: float) -> tf.Tensor:
  """tau = median + alike_threshold x 1.4826 x MAD of the finite pairs' similarities (i < j).

  float64 scalar; +inf with fewer than two finite clients (no pair).
  """
  index = stacked_ops.true_indices(finite)
  pairs = stacked_ops.submatrix(tf.cast(similarity, tf.float64), index)
  upper = tf.linalg.band_part(tf.ones_like(pairs, tf.bool), 0, -1) & ~tf.eye(
      tf.shape(pairs)[0], dtype=tf.bool)
  values = tf.boolean_mask(pairs, upper)

  def threshold():
    median = stacked_ops.median(values)
    mad = stacked_ops.median(tf.abs(values - median))
    return median + alike_threshold * MAD_TO_STD * mad

  return tf.cond(tf.size(values) > 0, threshold, lambda: tf.constant(float('inf'), tf.float64))


def alike_clients(similarity: tf.Tensor, finite: tf.Tensor, alike_threshold: float,
                  alike_group: int) -> tuple:
  """(alike bool [n], tau): finite clients with >= alike_group - 1 finite others above tau."""
  tau = pair_similarity_threshold(similarity, finite, alike_threshold)
  pair = finite[:, tf.newaxis] & finite[tf.newaxis, :] & ~tf.eye(tf.shape(finite)[0],
                                                                  dtype=tf.bool)
  above = pair & (tf.cast(similarity, tf.float64) > tau)
  neighbours = tf.reduce_sum(tf.cast(above, tf.int32), axis=1)
  return finite & (neighbours >= alike_group - 1), tau


def hardened_round_blocks(blocks,
                          noise_seed: tf.Tensor,
                          noise_lambda: float,
                          alike_threshold: float = 2.0,
                          alike_group: int = 3,
                          min_samples: int = 1,
                          global_model: Optional[tf.Tensor] = None,
                          labels_fn=clustering.hdbscan_labels,
                          distance: Optional[str] = None) -> tuple:
  """One hardened FLAME round on G row blocks (see the module doc).

  Arguments as `flame.flame_round_blocks`, with `alike_threshold` (MADs above
  the median pair similarity) and `alike_group` (the smallest group rejected).
  Returns (aggregate float32 [d], measurements): FLAME's, then `alike` (int32
  [n], 1 for a client rejected as alike), `num_alike` and
  `alike_similarity` (tau).
  """
  distance = flame.resolve_distance(distance, 'update' if global_model is None else 'model')
  distances, gram, norms, finite = flame.client_geometry(blocks, distance, global_model)
  similarity = 1.0 - stacked_ops.cosine_distances_from_gram(gram)
  alike, tau = alike_clients(similarity, finite, alike_threshold, alike_group)
  candidates = finite & ~alike
  min_cluster_size = flame.default_min_cluster_size(
      tf.reduce_sum(tf.cast(candidates, tf.int32)))
  labels, admitted = flame.cluster_from_distances(distances, candidates, min_cluster_size,
                                                  min_samples, labels_fn)
  bound = flame.clipping_bound(norms, finite)
  with tf.control_dependencies([distances]):  # the Gram pass first, then the sum pass
    mean = flame.clipped_mean(blocks, norms, bound, admitted)
  fallback = tf.logical_not(tf.reduce_any(admitted))
  aggregate, sigma = flame.add_noise(mean, bound, noise_lambda, noise_seed, fallback)
  measurements = flame.flame_measurements(finite, admitted, labels, norms, bound, sigma,
                                          fallback)
  measurements.update(alike=tf.cast(alike, tf.int32),
                      num_alike=tf.reduce_sum(tf.cast(alike, tf.int32)), alike_similarity=tau)
  return aggregate, measurements


class HardenedFlameFactory(flame.FlameFactory):
  """FLAME that first rejects groups of updates more alike than benign ones (module doc).

  Takes FlameFactory's arguments (its `min_cluster_size` is not used: the
  cluster must be a majority of the clients left after step 1), plus:
    alike_threshold: tau is this many MADs above the median pair similarity.
    alike_group: the smallest group of alike updates rejected (>= 2).
  """

  def __init__(self, alike_threshold: float = 2.0, alike_group: int = 3, **flame_args):
    if flame_args.get('min_cluster_size') is not None:
      raise ValueError('HardenedFlameFactory sets the cluster size from the clients left after '
                       'the alike step; min_cluster_size must stay None.')
    super().__init__(**flame_args)
    if not alike_threshold >= 0:
      raise ValueError(f'alike_threshold must be >= 0, got {alike_threshold!r}.')
    if not isinstance(alike_group, int) or alike_group < 2:
      raise ValueError(f'alike_group must be an int >= 2, got {alike_group!r}.')
    self._alike_threshold = float(alike_threshold)
    self._alike_group = alike_group

  def round_blocks(self, blocks, noise_seed, global_model):
    return hardened_round_blocks(
        blocks, noise_seed, self._noise_lambda, self._alike_threshold, self._alike_group,
        self._min_samples, global_model=global_model, labels_fn=clustering.hdbscan_labels,
        distance=self._distance)

