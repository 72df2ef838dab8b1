"""Base factory for defenses that need all client updates at the server at once.

FLAME and the robust-aggregation baselines look at every client's update
together (distances, medians, scores). This base gathers the n client values
at the server with TFF's reservoir sampler (sample size >= n keeps them all),
flattens them into one [n, d] matrix and hands it to `server_step`, a pure TF
function that subclasses implement.
"""

import abc
import collections
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff


def flattenleaves_of(leaves) -> tf.Tensor:
  """[n, d] float32 matrix from a list of stacked [n, ...] tensors."""
  n = tf.shape(leaves[0])[0]
  return tf.concat([tf.reshape(tf.cast(x, tf.float32), [n, -1]) for x in leaves], axis=1)


def unflatten_vector(vector: tf.Tensor, specs) -> list:
  """Splits a [d] vector into tensors of the given (shape, dtype) specs."""
  sizes = [int(np.prod(shape)) for shape, _ in specs]
  parts = tf.split(vector, sizes) if len(sizes) > 1 else [vector]
  return [tf.cast(tf.reshape(p, shape), dtype) for p, (shape, dtype) in zip(parts, specs)]


def _leaf_types(value_type) -> list:
  if isinstance(value_type, tff.TensorType):
    return [value_type]
  return list(tff.structure.flatten(value_type))


def check_value_type(value_type) -> list:
  """(shape, dtype) of each leaf; raises unless all leaves are fully defined float tensors."""
  if not (isinstance(value_type, tff.TensorType) or
          tff.types.is_structure_of_tensors(value_type)):
    raise TypeError(f'value_type must be a structure of float tensors, got {value_type!r}.')
  specs = []
  for leaf in _leaf_types(value_type):
    dtype = tf.dtypes.as_dtype(leaf.dtype)
    if not dtype.is_floating:
      raise TypeError(f'value_type must hold only float tensors, got a {dtype.name} leaf '
                      f'in {value_type!r}.')
    if not tf.TensorShape(leaf.shape).is_fully_defined():
      raise TypeError(f'value_type leaves must have fully defined shapes, got {leaf!r}.')
    specs.append((tuple(leaf.shape), dtype))
  return specs


def leaves_of(value) -> list:
  """The tensors of a TFF Struct or a Python structure, in order."""
  if isinstance(value, tff.structure.Struct):
    return tff.structure.flatten(value)
  return tf.nest.flatten(value)


def _pack_like(template_type, leaves):
  """Packs leaves into the Python container of a TFF type (list, OrderedDict...)."""
  if isinstance(template_type, tff.TensorType):
    return leaves[0]
  struct = tff.structure.pack_sequence_as(template_type, leaves)
  return tff.types.type_to_py_container(struct, template_type)


class GatheredAggregationFactory(tff.aggregators.UnweightedAggregationFactory, abc.ABC):
  """Gathers all client updates as [n, d] at the server and calls `server_step`."""

  def __init__(self, max_clients: int = 1000):
    if not isinstance(max_clients, int) or max_clients < 1:
      raise ValueError(f'max_clients must be a positive int, got {max_clients!r}.')
    self._max_clients = max_clients

  @abc.abstractmethod
  def initial_state(self) -> Any:
    """The server state at round 0 (TF values; called in a TF computation)."""

  @abc.abstractmethod
  def server_step(self, state, updates: tf.Tensor, reference=None):
    """Returns (new_state, aggregate [d], measurements) for updates [n, d].

    `reference` is the flattened global model when the caller supplies it
    (see `create_with_reference`), else None.
    """

  def create(self, value_type) -> tff.templates.AggregationProcess:
    return self._build(value_type, with_reference=False, labelled=False)

  def create_with_reference(self, value_type, labelled: bool = False) -> tff.templates.MeasuredProcess:
    """Like `create`, but `next(state, value@CLIENTS, reference@SERVER)`.

    The reference is a server-placed value of `value_type` (the global model),
    for defenses that work on local models G - delta_i rather than updates.
    `labelled` is as in `create_labelled`.
    """
    return self._build(value_type, with_reference=True, labelled=labelled)

  def create_labelled(self, value_type) -> tff.templates.MeasuredProcess:
    """For experiments: clients send `(update, is_malicious)`, an int32 0/1 flag.

    The flag travels with its update through the gather, so the filter's
    true/false positive rates are exact whatever order TFF gathers clients in.
    Adds measurements `num_malicious`, `tpr` (malicious updates rejected /
    malicious; NaN without malicious clients) and `tnr` (benign admitted /
    benign). The result is the aggregate of the updates only.
    """
    return self._build(value_type, with_reference=False, labelled=True)

  def _build(self, value_type, with_reference: bool, labelled: bool):
    specs = check_value_type(value_type)
    client_type = (tff.StructWithPythonType([value_type, tff.TensorType(np.int32)], tuple)
                   if labelled else value_type)
    gather = tff.aggregators.UnweightedReservoirSamplingFactory(
        sample_size=self._max_clients).create(client_type)
    stacked_type = gather.next.type_signature.result.result.member
    max_clients = self._max_clients

    @tff.tensorflow.computation
    def initial_state_tf():
      return self.initial_state()

    state_type = initial_state_tf.type_signature.result

    def server_body(state, stacked, num_clients, reference):
      flags = None
      if labelled:
        stacked, flags = stacked[0], stacked[1]
      updates = flattenleaves_of(leaves_of(stacked))
      all_gathered = tf.debugging.assert_equal(
          tf.shape(updates)[0], num_clients,
          message=f'more clients took part than max_clients={max_clients}: '
          'raise max_clients so that every update reaches the defense.')
      with tf.control_dependencies([all_gathered]):
        updates = tf.identity(updates)
      if reference is not None:
        reference = flattenleaves_of([tf.expand_dims(x, 0) for x in leaves_of(reference)])[0]
      new_state, aggregate, measurements = self.server_step(state, updates, reference)
      if labelled:
        measurements = collections.OrderedDict(
            measurements, **filter_rates(flags, measurements['admitted']))
      result = _pack_like(value_type, unflatten_vector(aggregate, specs))
      return new_state, result, measurements

    @tff.federated_computation()
    def init_fn():
      return tff.federated_eval(initial_state_tf, tff.SERVER)

    federated_state_type = init_fn.type_signature.result
    client_value_type = tff.FederatedType(client_type, tff.CLIENTS)

    def gather_all(value):
      num_clients = tff.federated_sum(tff.federated_value(np.int32(1), tff.CLIENTS))
      return gather.next(gather.initialize(), value).result, num_clients

    if with_reference:
      @tff.tensorflow.computation(state_type, stacked_type, np.int32, value_type)
      def server_with_reference(state, stacked, num_clients, reference):
        return server_body(state, stacked, num_clients, reference)

      @tff.federated_computation(federated_state_type, client_value_type,
                                 tff.FederatedType(value_type, tff.SERVER))
      def next_with_reference(state, value, reference):
        stacked, num_clients = gather_all(value)
        new_state, result, measurements = tff.federated_map(
            server_with_reference, tff.federated_zip((state, stacked, num_clients, reference)))
        return tff.templates.MeasuredProcessOutput(new_state, result, measurements)

      return tff.templates.MeasuredProcess(init_fn, next_with_reference)

    @tff.tensorflow.computation(state_type, stacked_type, np.int32)
    def server(state, stacked, num_clients):
      return server_body(state, stacked, num_clients, None)

    @tff.federated_computation(federated_state_type, client_value_type)
    def next_fn(state, value):
      stacked, num_clients = gather_all(value)
      new_state, result, measurements = tff.federated_map(
          server, tff.federated_zip((state, stacked, num_clients)))
      return tff.templates.MeasuredProcessOutput(new_state, result, measurements)

    if labelled:
      return tff.templates.MeasuredProcess(init_fn, next_fn)
    return tff.templates.AggregationProcess(init_fn, next_fn)


def filter_rates(is_malicious: tf.Tensor, admitted: tf.Tensor) -> dict:
  """TPR = malicious rejected / malicious, TNR = benign admitted / benign (NaN if none)."""
  malicious = tf.equal(is_malicious, 1)
  admitted = tf.equal(admitted, 1)
  count = lambda mask: tf.reduce_sum(tf.cast(mask, tf.float64))
  num_malicious = count(malicious)
  num_benign = count(tf.logical_not(malicious))
  nan = tf.constant(float('nan'), tf.float64)
  tpr = tf.where(num_malicious > 0,
                 count(malicious & tf.logical_not(admitted)) / tf.maximum(num_malicious, 1.0), nan)
  tnr = tf.where(num_benign > 0,
                 count(tf.logical_not(malicious) & admitted) / tf.maximum(num_benign, 1.0), nan)
  return dict(num_malicious=tf.cast(num_malicious, tf.int32), tpr=tpr, tnr=tnr)


def create_labelled(factory: tff.aggregators.UnweightedAggregationFactory, value_type,
                    with_reference: bool = False) -> tff.templates.MeasuredProcess:
  """A process taking `(update, is_malicious)` client values for any unweighted factory.

  Gathering factories measure TPR/TNR from the flags; others (a plain mean,
  TFF's clipping or DP factories) do not filter, so the flag is dropped. With
  `with_reference`, `next` also takes the global model at the server (used by
  gathering factories that cluster local models, ignored by the others).
  """
  if isinstance(factory, GatheredAggregationFactory):
    if with_reference:
      return factory.create_with_reference(value_type, labelled=True)
    return factory.create_labelled(value_type)
  inner = factory.create(value_type)
  labelled_type = tff.FederatedType(
      tff.StructWithPythonType([value_type, tff.TensorType(np.int32)], tuple), tff.CLIENTS)
  state_type = inner.initialize.type_signature.result
  if with_reference:
    @tff.federated_computation(state_type, labelled_type, tff.FederatedType(value_type, tff.SERVER))
    def next_with_reference(state, value, reference):
      del reference
      return inner.next(state, value[0])
    return tff.templates.MeasuredProcess(inner.initialize, next_with_reference)

  @tff.federated_computation(state_type, labelled_type)
  def next_fn(state, value):
    return inner.next(state, value[0])
  return tff.templates.MeasuredProcess(inner.initialize, next_fn)
