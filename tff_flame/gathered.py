"""Base factory for defenses that need every client update at the server at once.

FLAME and the robust baselines look at all client updates together
(distances, medians, scores). This base has one job: gather the n client
values at the server as one [n, d] float32 matrix and call `server_step`, a
pure TF function each defense implements.

Two optional inputs ride along without changing that job:

* the global model, for defenses that set `requires_global_model` (FLAME in
  the paper's model space): `next(state, value@CLIENTS, global_model@SERVER)`;
* a row-aligned payload (`create_gathered(value_type, payload_type)`): each
  client sends `(value, payload)`, and the gathered payloads come back in the
  measurement `payload`, in the same row order as the per-row measurements
  (`admitted`, ...). Experiments send ground-truth flags this way.
"""

import abc
import collections
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_flame import stacked_ops


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

  @property
  def requires_global_model(self) -> bool:
    """Whether `server_step` needs the global model (then `next` takes it at the server)."""
    return False

  @abc.abstractmethod
  def initial_state(self) -> Any:
    """The server state at round 0 (TF values; called in a TF computation)."""

  @abc.abstractmethod
  def server_step(self, state, updates: tf.Tensor, global_model: Optional[tf.Tensor]):
    """Returns (new_state, aggregate [d], measurements) for updates [n, d].

    `global_model` is the flattened [d] global model when
    `requires_global_model`, else None.
    """

  def create(self, value_type) -> tff.templates.AggregationProcess:
    if self.requires_global_model:
      raise ValueError(
          f'{type(self).__name__} needs the global model, which a plain aggregation process '
          'does not receive: use create_gathered(value_type) (next(state, value, '
          'global_model)) or tff_flame.build_flame_fed_avg.')
    process = self.create_gathered(value_type)
    return tff.templates.AggregationProcess(process.initialize, process.next)

  def create_gathered(self, value_type, payload_type=None) -> tff.templates.MeasuredProcess:
    """The gathering process, with the global model and a row payload if wanted.

    `next(state, value@CLIENTS)`, or `next(state, value@CLIENTS,
    global_model@SERVER)` when `requires_global_model` (the global model has
    `value_type`). With a `payload_type`, each client value is
    `(value, payload)` and the measurements gain `payload`: the gathered
    payloads, row-aligned with the per-row measurements.
    """
    specs = check_value_type(value_type)
    client_type = (value_type if payload_type is None else
                   tff.StructWithPythonType([value_type, payload_type], tuple))
    gather = tff.aggregators.UnweightedReservoirSamplingFactory(
        sample_size=self._max_clients).create(client_type)
    stacked_type = gather.next.type_signature.result.result.member
    max_clients = self._max_clients

    @tff.tensorflow.computation
    def initial_state_tf():
      return self.initial_state()

    def server_body(state, stacked, num_clients, global_model):
      payload = None
      if payload_type is not None:
        stacked, payload = stacked[0], stacked[1]
      updates = stacked_ops.flatten_rows(leaves_of(stacked))
      all_gathered = tf.debugging.assert_equal(
          tf.shape(updates)[0], num_clients,
          message=f'more clients took part than max_clients={max_clients}: '
          'raise max_clients so that every update reaches the defense.')
      with tf.control_dependencies([all_gathered]):
        updates = tf.identity(updates)
      if global_model is not None:
        global_model = stacked_ops.flatten_rows(
            [tf.expand_dims(x, 0) for x in leaves_of(global_model)])[0]
      new_state, aggregate, measurements = self.server_step(state, updates, global_model)
      if payload is not None:
        measurements = collections.OrderedDict(measurements, payload=payload)
      result = _pack_like(value_type, stacked_ops.unflatten_vector(aggregate, specs))
      return new_state, result, measurements

    server_state_type = initial_state_tf.type_signature.result
    if self.requires_global_model:
      @tff.tensorflow.computation(server_state_type, stacked_type, np.int32, value_type)
      def server(state, stacked, num_clients, global_model):
        return server_body(state, stacked, num_clients, global_model)
    else:
      @tff.tensorflow.computation(server_state_type, stacked_type, np.int32)
      def server(state, stacked, num_clients):
        return server_body(state, stacked, num_clients, None)

    @tff.federated_computation()
    def init_fn():
      return tff.federated_eval(initial_state_tf, tff.SERVER)

    def round_at_server(state, value, *global_model):
      num_clients = tff.federated_sum(tff.federated_value(np.int32(1), tff.CLIENTS))
      stacked = gather.next(gather.initialize(), value).result
      new_state, result, measurements = tff.federated_map(
          server, tff.federated_zip((state, stacked, num_clients, *global_model)))
      return tff.templates.MeasuredProcessOutput(new_state, result, measurements)

    state_type = init_fn.type_signature.result
    client_value_type = tff.FederatedType(client_type, tff.CLIENTS)
    if self.requires_global_model:
      @tff.federated_computation(state_type, client_value_type,
                                 tff.FederatedType(value_type, tff.SERVER))
      def next_with_global_model(state, value, global_model):
        return round_at_server(state, value, global_model)
      return tff.templates.MeasuredProcess(init_fn, next_with_global_model)

    @tff.federated_computation(state_type, client_value_type)
    def next_fn(state, value):
      return round_at_server(state, value)
    return tff.templates.MeasuredProcess(init_fn, next_fn)
