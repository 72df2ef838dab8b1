"""Keeps NaN/Inf client updates out of an aggregator that has no such guard (TFF's own).

TFF's clipping and DP factories clip with `tf.clip_by_global_norm`, which
turns a client value holding NaN or Inf into NaN, and one such client makes
the whole aggregate NaN. This wrapper screens each client value at the
client: a value with any non-finite entry is replaced by zeros and given
weight 0, then handed to the inner factory.

* Weighted inner factory (e.g. `clipping_factory(c, tff.aggregators.MeanFactory())`):
  the weight is 1 for a finite value and 0 otherwise, so a weighted mean
  leaves the non-finite clients out entirely (numerator and denominator).
* Unweighted inner factory (e.g. `DifferentiallyPrivateFactory`): the zeroed
  value adds nothing to a sum; a mean that divides by a fixed denominator
  (DP's `clients_per_round`) is unchanged by design.

Measurements: `num_clients`, `num_non_finite` and the inner factory's
measurements under `inner_name`.
"""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_flame import gathered_factory


def _all_finite(value) -> tf.Tensor:
  leaves = gathered_factory.leaves_of(value)
  return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(x)) for x in leaves]))


def _zeros_unless(finite: tf.Tensor, value):
  fn = lambda x: tf.where(finite, x, tf.zeros_like(x))
  if isinstance(value, tff.structure.Struct):
    return tff.structure.map_structure(fn, value)
  return tf.nest.map_structure(fn, value)


class NonFiniteFilterFactory(tff.aggregators.UnweightedAggregationFactory):
  """An unweighted factory that drops non-finite client values before `inner`."""

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
    gathered_factory.check_value_type(value_type)
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
