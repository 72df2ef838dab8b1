"""Robust-aggregation baselines as gathering factories, and a non-finite filter for TFF's own.

Krum and Multi-Krum (Blanchard et al. 2017), the coordinate-wise median and
trimmed mean (Yin et al. 2018) and FoolsGold (Fung et al. 2020) are gathering
factories like FLAME: each round is a pure TF function on the G row blocks
the gather delivers (`krum_round_blocks`, `coordinate_round_blocks`,
`foolsgold_round_blocks`), and clients whose update has NaN or Inf (or a
norm above float32's max) are left out, as in FLAME. `NonFiniteFilterFactory`
screens client values in front of a factory that has no such guard (norm
bounding, weak DP).
"""

import collections
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_flame import blockwise_ops
from tff_flame import gathered
from tff_flame import grouped_gather
from tff_flame import measurements as measurements_lib
from tff_flame import stacked_ops


def krum_scores_from_distances(d: tf.Tensor, num_byzantine: int) -> tuple:
  """Krum scores from [m, m] squared distances: sum over the n - f - 2 nearest other rows.

  Returns (scores [m], neighbours used, assumption_holds) where the
  neighbour count is clamped to [1, n - 1] when n <= 2f + 2 (Krum's
  assumption n > 2f + 2 fails; `assumption_holds` is then False).
  """
  n = tf.shape(d)[0]
  wanted = n - num_byzantine - 2
  k = tf.clip_by_value(wanted, 1, tf.maximum(n - 1, 1))
  # Exclude the row itself: push the diagonal past every real distance.
  d = tf.linalg.set_diag(d, tf.fill([n], tf.constant(float('inf'), tf.float64)))
  nearest = tf.sort(d, axis=1)[:, :k]
  return tf.reduce_sum(nearest, axis=1), k, wanted >= 1


def krum_selection(scores: tf.Tensor, num_byzantine: int,
                   num_selected: Optional[int] = None) -> tf.Tensor:
  """int32 positions of the lowest `num_selected` scores (None: m - f, at least 1), lowest
  position first on a tie; at most all m."""
  m = tf.shape(scores)[0]
  select = tf.maximum(m - num_byzantine, 1) if num_selected is None else tf.constant(num_selected)
  return tf.argsort(scores, stable=True)[:tf.minimum(select, m)]


def krum_round_blocks(blocks, num_byzantine: int, num_selected: Optional[int] = None) -> tuple:
  """Krum (`num_selected=1`) or Multi-Krum (None: n - f) on the updates held as G row blocks.

  The mean of the selected finite updates, by `krum_scores_from_distances`
  and `krum_selection`. Squared distances come from the block-wise float64
  Gram matrix, and the selected rows are averaged block by block in float64.
  A client whose norm exceeds float32's max counts as non-finite (see
  `blockwise_ops.finite_rows`). Measurements: the common ones, `scores`
  (NaN for non-finite clients), `neighbours` and `assumption_holds`.
  """
  n = blockwise_ops.num_rows(blocks)
  finite = blockwise_ops.finite_rows(blocks)
  index = stacked_ops.true_indices(finite)
  with tf.control_dependencies([finite]):  # one pass over the blocks at a time
    gram = blockwise_ops.gram_matrix(blocks, tf.float64)
  scores, k, holds = krum_scores_from_distances(
      blockwise_ops.squared_distances_from_gram(stacked_ops.submatrix(gram, index)),
      num_byzantine)
  chosen = tf.gather(index, krum_selection(scores, num_byzantine, num_selected))
  admitted = stacked_ops.scatter_to_clients(tf.ones_like(chosen, tf.bool), chosen, n, fill=False)
  weights = tf.math.divide_no_nan(tf.cast(admitted, tf.float64),
                                  tf.cast(tf.size(chosen), tf.float64))
  with tf.control_dependencies([gram]):
    aggregate = tf.cast(blockwise_ops.weighted_sum(blocks, weights), tf.float32)
  measurements = measurements_lib.admission_measurements(
      finite, admitted, scores=stacked_ops.scatter_to_clients(scores, index, n, fill=np.nan),
      neighbours=k, assumption_holds=tf.cast(holds, tf.int32))
  return aggregate, measurements


def coordinate_round_blocks(blocks, statistic: Callable[[tf.Tensor], tf.Tensor]) -> tuple:
  """A per-coordinate `statistic` over the finite updates held as G row blocks.

  The usable rows are concatenated once, then `statistic` ([m, d] -> [d]);
  use the overflow-safe `blockwise_ops.coordinate_median` and
  `blockwise_ops.trimmed_mean`. Every finite client counts as admitted; a
  client whose norm exceeds float32's max counts as non-finite. No finite
  client: the aggregate is 0.
  """
  finite = blockwise_ops.finite_rows(blocks)
  rows = blockwise_ops.concat_rows(blocks, finite)
  aggregate = tf.cond(tf.shape(rows)[0] > 0, lambda: statistic(rows),
                      lambda: tf.zeros([tf.shape(rows)[1]], rows.dtype))
  return aggregate, measurements_lib.admission_measurements(finite, finite)


class KrumFactory(gathered.GatheredAggregationFactory):
  """Averages the `num_selected` updates with the lowest Krum scores.

  `num_selected=1` is Krum; `None` is Multi-Krum with m = n - f. When
  n <= 2f + 2 the neighbour count is clamped to >= 1 and the measurement
  `assumption_holds` is 0; the round still runs.
  """

  def __init__(self, num_byzantine: int, num_selected: Optional[int] = 1,
               max_clients: int = 1000):
    super().__init__(max_clients=max_clients)
    if not isinstance(num_byzantine, int) or num_byzantine < 0:
      raise ValueError(f'num_byzantine must be an int >= 0, got {num_byzantine!r}.')
    if num_selected is not None and (not isinstance(num_selected, int) or num_selected < 1):
      raise ValueError(f'num_selected must be None or an int >= 1, got {num_selected!r}.')
    self._num_byzantine = num_byzantine
    self._num_selected = num_selected

  def initial_state(self):
    return ()

  def server_step(self, state, blocks, global_model):
    aggregate, measurements = krum_round_blocks(blocks, self._num_byzantine, self._num_selected)
    return state, aggregate, measurements


class CoordinateMedianFactory(gathered.GatheredAggregationFactory):
  """The per-coordinate median of the finite client updates."""

  def initial_state(self):
    return ()

  def server_step(self, state, blocks, global_model):
    aggregate, measurements = coordinate_round_blocks(blocks, blockwise_ops.coordinate_median)
    return state, aggregate, measurements


class TrimmedMeanFactory(gathered.GatheredAggregationFactory):
  """Per coordinate, drops the floor(beta * n) largest and smallest values, then averages."""

  def __init__(self, trim_fraction: float = 0.2, max_clients: int = 1000):
    super().__init__(max_clients=max_clients)
    if not 0.0 <= trim_fraction < 0.5:
      raise ValueError(f'trim_fraction must be in [0, 0.5), got {trim_fraction!r}.')
    self._trim_fraction = float(trim_fraction)

  def initial_state(self):
    return ()

  def server_step(self, state, blocks, global_model):
    aggregate, measurements = coordinate_round_blocks(
        blocks, lambda x: blockwise_ops.trimmed_mean(x, self._trim_fraction))
    return state, aggregate, measurements


FOOLSGOLD_EPSILON = 1e-5


def foolsgold_weights_from_cosine(cosine: tf.Tensor, kappa: float = 1.0) -> tf.Tensor:
  """FoolsGold's per-client weights in [0, 1] (float64 [n]) from the [n, n] cosine
  similarities of the clients' histories.

  Fung et al. 2020, Algorithm 1, as in the authors' code: cs_ij with
  cs_ii = 0; v_i = max_j cs_ij (+ 1e-5); pardoning: cs_ij *= v_i / v_j where
  v_i < v_j; alpha_i = 1 - max_j cs_ij clipped to [0, 1]; alpha /= max(alpha),
  with 1 set to 0.99; logit alpha_i = kappa * (ln(alpha_i / (1 - alpha_i) +
  1e-5) + 0.5), clipped to [0, 1]. When every alpha is 0 before the rescaling
  (all rows alike), every weight is 0 (the authors' code divides by zero
  there).
  """
  n = tf.shape(cosine)[0]
  cs = tf.linalg.set_diag(tf.cast(cosine, tf.float64), tf.zeros([n], tf.float64))
  v = tf.reduce_max(cs, axis=1) + FOOLSGOLD_EPSILON
  pardon = v[:, tf.newaxis] < v[tf.newaxis, :]
  cs = tf.where(pardon, cs * v[:, tf.newaxis] / v[tf.newaxis, :], cs)
  alpha = tf.clip_by_value(1.0 - tf.reduce_max(cs, axis=1), 0.0, 1.0)
  alpha = tf.math.divide_no_nan(alpha, tf.reduce_max(alpha))
  alpha = tf.where(tf.equal(alpha, 1.0), tf.constant(0.99, tf.float64), alpha)
  logit = kappa * (tf.math.log(alpha / (1.0 - alpha) + FOOLSGOLD_EPSILON) + 0.5)
  return tf.clip_by_value(logit, 0.0, 1.0)


def foolsgold_round_blocks(blocks, kappa: float = 1.0) -> tuple:
  """FoolsGold's weighted mean of the finite updates held as G row blocks, with this
  round's updates as the histories.

  The aggregate is sum_i w_i u_i / sum_i w_i (zeros and `fallback = 1` when
  every weight is 0): a weighted mean, where the authors' code returns the
  weighted sum and leaves the scale to its learning rate. `admitted` is
  w_i > 0: a client with weight 0 adds nothing to the model. The
  similarities come from the block-wise Gram matrix and the weighted mean is
  summed block by block; a non-finite client (NaN, Inf, or a norm above
  float32's max) gets weight 0 and is left out of the similarities.
  """
  n = blockwise_ops.num_rows(blocks)
  finite = blockwise_ops.finite_rows(blocks)
  index = stacked_ops.true_indices(finite)
  gram = stacked_ops.submatrix(blockwise_ops.gram_matrix(blocks, tf.float32), index)
  finite_weights = tf.cond(
      tf.size(index) > 0,
      lambda: foolsgold_weights_from_cosine(1.0 - stacked_ops.cosine_distances_from_gram(gram),
                                            kappa),
      lambda: tf.zeros([0], tf.float64))
  weights = stacked_ops.scatter_to_clients(finite_weights, index, n)
  total = tf.reduce_sum(weights)
  aggregate = tf.cast(tf.math.divide_no_nan(blockwise_ops.weighted_sum(blocks, weights), total),
                      tf.float32)
  measurements = measurements_lib.admission_measurements(
      finite, weights > 0.0, weights=weights, fallback=tf.cast(total <= 0.0, tf.int32))
  return aggregate, measurements


class FoolsGoldFactory(gathered.GatheredAggregationFactory):
  """FoolsGold (Fung et al. 2020): down-weights clients whose updates look alike.

  Stateless, per round: the similarities are between this round's updates,
  not between each client's sum of updates over all its rounds as in the
  paper. A TFF aggregator does not learn which client sent which value
  (clients are anonymous to the server and are gathered in no promised
  order), so a history keyed by client cannot be kept by the factory alone;
  with clients sampled per round a client's history would also be sparse.
  Colluding attackers that share one objective in the same round (the case
  FoolsGold targets) still look alike within that round. A caller that does
  know the client ids can pass the similarities of the summed histories to
  `foolsgold_weights_from_cosine`. The optional feature-importance weighting
  of the paper is not used (the authors' default).
  """

  def __init__(self, kappa: float = 1.0, max_clients: int = 1000):
    super().__init__(max_clients=max_clients)
    if not kappa > 0:
      raise ValueError(f'kappa must be > 0, got {kappa!r}.')
    self._kappa = float(kappa)

  def initial_state(self):
    return ()

  def server_step(self, state, blocks, global_model):
    aggregate, measurements = foolsgold_round_blocks(blocks, kappa=self._kappa)
    return state, aggregate, measurements


def _all_finite(value) -> tf.Tensor:
  """Whether every entry is finite AND float32 can hold the value's squared L2 norm.

  TFF's clipping (`tf.clip_by_global_norm`, under `clipping_factory` and the
  DP factories) sums the squares in float32: a finite value whose squared
  norm overflows (e.g. all entries 1e19 or 3e38) turns into NaN there, so it
  is screened like a NaN value. The squared norm is summed in float64, where
  it cannot overflow.
  """
  leaves = grouped_gather.leaves_of(value)
  finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(x)) for x in leaves]))
  squares = tf.add_n([tf.reduce_sum(tf.square(tf.cast(x, tf.float64))) for x in leaves])
  return finite & (squares <= blockwise_ops.FLOAT32_MAX)


def _zeros_unless(finite: tf.Tensor, value):
  fn = lambda x: tf.where(finite, x, tf.zeros_like(x))
  if isinstance(value, tff.structure.Struct):
    return tff.structure.map_structure(fn, value)
  return tf.nest.map_structure(fn, value)


class NonFiniteFilterFactory(tff.aggregators.UnweightedAggregationFactory):
  """An unweighted factory that drops non-finite client values before `inner`.

  TFF's clipping and DP factories clip with `tf.clip_by_global_norm`, which
  turns a client value holding NaN or Inf into NaN, and one such client makes
  the whole aggregate NaN. This wrapper screens each client value at the
  client: a value with any non-finite entry, or whose squared L2 norm float32
  cannot hold (it would overflow inside TFF's clipping and give NaN), is
  replaced by zeros and given weight 0, then handed to the inner factory.

  * Weighted inner factory (e.g. `clipping_factory(c, tff.aggregators.MeanFactory())`):
    the weight is 1 for a finite value and 0 otherwise, so a weighted mean
    leaves the non-finite clients out entirely (numerator and denominator).
  * Unweighted inner factory (e.g. `DifferentiallyPrivateFactory`): the zeroed
    value adds nothing to a sum; a mean that divides by a fixed denominator
    (DP's `clients_per_round`) is unchanged by design.

  Measurements: `num_clients`, `num_non_finite` and the inner factory's
  measurements under `inner_name`.
  """

  def __init__(self, inner: tff.aggregators.AggregationFactory, inner_name: str = 'inner'):
    if not isinstance(inner, (tff.aggregators.UnweightedAggregationFactory,
                              tff.aggregators.WeightedAggregationFactory)):
      raise TypeError(f'inner must be a TFF aggregation factory, got {inner!r}.')
    if not isinstance(inner_name, str) or not inner_name.isidentifier() or inner_name in (
        'num_clients', 'num_non_finite'):
      raise ValueError(f'inner_name must be an identifier other than num_clients and '
                       f'num_non_finite, got {inner_name!r}.')
    self._inner = inner
    self._inner_name = inner_name

  @property
  def inner(self) -> tff.aggregators.AggregationFactory:
    return self._inner

  def create(self, value_type) -> tff.templates.AggregationProcess:
    grouped_gather.check_value_type(value_type)
    weighted = isinstance(self._inner, tff.aggregators.WeightedAggregationFactory)
    if weighted:
      inner_process = self._inner.create(value_type, tff.TensorType(np.float32))
    else:
      inner_process = self._inner.create(value_type)

    @tff.tensorflow.computation(value_type)
    def screen(value):
      finite = _all_finite(value)
      return _zeros_unless(finite, value)

    @tff.tensorflow.computation(value_type)
    def finite_weight(value):
      return tf.cast(_all_finite(value), tf.float32)

    @tff.tensorflow.computation(value_type)
    def non_finite_count(value):
      return tf.cast(tf.logical_not(_all_finite(value)), tf.int32)

    state_type = inner_process.initialize.type_signature.result
    inner_name = self._inner_name

    @tff.federated_computation(state_type, tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      safe = tff.federated_map(screen, value)
      if weighted:
        output = inner_process.next(state, safe, tff.federated_map(finite_weight, value))
      else:
        output = inner_process.next(state, safe)
      measurements = collections.OrderedDict([
          ('num_clients', tff.federated_sum(tff.federated_value(np.int32(1), tff.CLIENTS))),
          ('num_non_finite', tff.federated_sum(tff.federated_map(non_finite_count, value))),
          (inner_name, output.measurements),
      ])
      return tff.templates.MeasuredProcessOutput(
          output.state, output.result, tff.federated_zip(measurements))

    return tff.templates.AggregationProcess(inner_process.initialize, next_fn)
