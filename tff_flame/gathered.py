"""Base factory for defenses that need every client update at the server at once.

FLAME and the robust baselines look at all client updates together
(distances, medians, scores). This base has one job: gather the n client
values at the server, exactly and in bounded memory, and call `server_step`,
a pure TF function each defense implements.

The gather (`tff_flame.grouped_gather`) delivers the n updates as G * K row
blocks [m_g, d] (sum_g m_g = n), never as one [n, d] matrix built by a single
concatenating `federated_aggregate`: TFF's C++ runtime keeps every
intermediate accumulator of an aggregate alive until it ends, so one
concatenating gather holds about n^2 / 2 * d floats (44 GB at n = 100 for the
EMNIST CNN). Each client picks its group alone, g = fingerprint(value) mod G,
and the server receives the groups in the canonical order (group,
fingerprint): the row order depends only on the multiset of client values,
never on the order TFF visits clients in. `server_step` works block by block
(`tff_flame.blockwise_ops`): Gram matrices, norms and clipped sums hold at
most one block or one column slice of all rows at a time; a coordinate-wise
defense may concatenate the rows once.

(G, K) is `grouped_gather.gather_layout(max_clients)` (see there): G aggregates of K
row stacks, about 4 clients per stack; K = 1 while max_clients <= 128, G at most 32.

Two optional inputs ride along without changing that job:

* the global model, for defenses that set `requires_global_model` (FLAME in
  the paper's model space): `next(state, value@CLIENTS, global_model@SERVER)`;
* a row-aligned payload (`create_gathered(value_type, payload_type)`): each
  client sends `(value, payload)`, and the gathered payloads come back in the
  measurement `payload`, in the same row order as the per-row measurements
  (`admitted`, ...). Experiments send ground-truth flags this way.

More clients than `max_clients` is an error (the round fails), never a
silent sample.
"""

import abc
import collections
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_flame import grouped_gather
from tff_flame import stacked_ops


def _pack_like(template_type, leaves):
  """Packs leaves into the Python container of a TFF type (list, OrderedDict...)."""
  if isinstance(template_type, tff.TensorType):
    return leaves[0]
  struct = tff.structure.pack_sequence_as(template_type, leaves)
  return tff.types.type_to_py_container(struct, template_type)


def _concat_payload(blocks):
  """The payload structure with leaves [n, ...]: the blocks' payloads in block order."""
  payloads = [b[grouped_gather.PAYLOAD] for b in blocks]
  if isinstance(payloads[0], tff.structure.Struct):
    payloads = [tff.structure.to_odict_or_tuple(p, recursive=True) for p in payloads]
  payloads = [tf.nest.map_structure(lambda x, b=b: tf.gather(x, b[grouped_gather.ORDER]), p)
              for p, b in zip(payloads, blocks)]
  return tf.nest.map_structure(lambda *xs: tf.concat(xs, axis=0), *payloads)


class GatheredAggregationFactory(tff.aggregators.UnweightedAggregationFactory, abc.ABC):
  """Gathers all client updates at the server as G * K row blocks and calls `server_step`."""

  def __init__(self, max_clients: int = 1000, num_groups: Optional[int] = None,
               stacks_per_group: Optional[int] = None):
    """Args:
      max_clients: most clients per round; a round with more fails.
      num_groups: G, the gather's aggregates; None =
        `grouped_gather.gather_layout(max_clients)`.
      stacks_per_group: K, row stacks per aggregate; None = the layout's K when
        num_groups is None, else ceil(max_clients / (4 G)).
    """
    if not isinstance(max_clients, int) or max_clients < 1:
      raise ValueError(f'max_clients must be a positive int, got {max_clients!r}.')
    for name, v in (('num_groups', num_groups), ('stacks_per_group', stacks_per_group)):
      if v is not None and (not isinstance(v, int) or v < 1):
        raise ValueError(f'{name} must be None or a positive int, got {v!r}.')
    self._max_clients = max_clients
    layout_groups, layout_stacks = grouped_gather.gather_layout(max_clients)
    self._num_groups = layout_groups if num_groups is None else num_groups
    if stacks_per_group is None:
      stacks_per_group = (layout_stacks if num_groups is None else
                          -(-max_clients // (4 * num_groups)))
    self._stacks_per_group = stacks_per_group

  @property
  def max_clients(self) -> int:
    return self._max_clients

  @property
  def num_groups(self) -> int:
    return self._num_groups

  @property
  def stacks_per_group(self) -> int:
    return self._stacks_per_group

  @property
  def requires_global_model(self) -> bool:
    """Whether `server_step` needs the global model (then `next` takes it at the server)."""
    return False

  def as_weighted(self) -> tff.aggregators.WeightedAggregationFactory:
    """The same aggregator for `build_weighted_fed_avg`; client weights are ignored."""
    return tff.aggregators.as_weighted_aggregator(self)

  @abc.abstractmethod
  def initial_state(self) -> Any:
    """The server state at round 0 (TF values; called in a TF computation)."""

  @abc.abstractmethod
  def server_step(self, state, blocks: list, global_model: Optional[tf.Tensor]):
    """Returns (new_state, aggregate [d], measurements) for the gathered updates.

    `blocks` is a list of G * K gathered blocks, OrderedDict(rows=float32
    [m_g, d], order=int32 [m_g]) (some may be empty): block g's rows in
    canonical order are rows[order]. Row i of the updates is row i of the
    blocks read that way, taken in order, and per-row measurements must use
    that order. Work on them with `tff_flame.blockwise_ops`, which reads
    each block through its order one block at a time (never build an
    [n, d] temporary you do not need; `blockwise_ops.concat_rows` builds
    one, for coordinate-wise statistics). `global_model` is the flattened
    float32 [d] global model when `requires_global_model`, else None.
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
    grouped_gather.check_value_type(value_type)
    client_type = (value_type if payload_type is None else
                   tff.StructWithPythonType([value_type, payload_type], tuple))
    gather = grouped_gather.build_grouped_gather(client_type, self._num_groups,
                                                 with_payload=payload_type is not None,
                                                 stacks_per_group=self._stacks_per_group)
    initialize = build_initialize(self)
    server = build_server_computation(self, value_type, gather,
                                      initialize.type_signature.result.member)
    return tff.templates.MeasuredProcess(
        initialize, build_next(initialize, client_type, value_type, gather, server,
                               self.requires_global_model))


def build_initialize(factory: GatheredAggregationFactory) -> tff.Computation:
  """`initialize()`: the factory's `initial_state()` placed at the server."""

  @tff.tensorflow.computation
  def initial_state():
    return factory.initial_state()

  @tff.federated_computation()
  def initialize():
    return tff.federated_eval(initial_state, tff.SERVER)

  return initialize


def checked_row_blocks(blocks: list, num_clients: tf.Tensor, max_clients: int) -> list:
  """The gathered blocks as OrderedDict(rows, order), once the round is checked: every
  client's row arrived, and no more than `max_clients` took part."""
  rows = [b[grouped_gather.ROWS] for b in blocks]
  orders = [b[grouped_gather.ORDER] for b in blocks]
  n = tf.add_n([tf.shape(r)[0] for r in rows])
  checks = [
      tf.debugging.assert_less_equal(
          num_clients, max_clients,
          message=f'more clients took part than max_clients={max_clients}: '
          'raise max_clients so that every update reaches the defense.'),
      tf.debugging.assert_equal(n, num_clients, message='the gather lost client rows.')]
  with tf.control_dependencies(checks):
    orders = [tf.identity(o) for o in orders]
  # Rows stay where the gather put them; `order` is applied one block at a time.
  return [collections.OrderedDict(rows=r, order=o) for r, o in zip(rows, orders)]


def build_server_computation(factory: GatheredAggregationFactory, value_type, gather,
                             state_type) -> tff.Computation:
  """`server(state, gathered, num_clients[, global_model])`: the factory's `server_step` on
  the checked blocks -> (new state, aggregate shaped as `value_type`, measurements)."""

  def body(state, gathered, num_clients, global_model):
    blocks = grouped_gather.blocks_of(gathered)
    row_blocks = checked_row_blocks(blocks, num_clients, factory.max_clients)
    if global_model is not None:
      global_model = stacked_ops.flatten_rows(
          [tf.expand_dims(x, 0) for x in grouped_gather.leaves_of(global_model)])[0]
    new_state, aggregate, measurements = factory.server_step(state, row_blocks, global_model)
    if gather.with_payload:
      measurements = collections.OrderedDict(measurements, payload=_concat_payload(blocks))
    result = _pack_like(value_type, stacked_ops.unflatten_vector(aggregate, gather.specs))
    return new_state, result, measurements

  if factory.requires_global_model:
    @tff.tensorflow.computation(state_type, gather.result_type, np.int32, value_type)
    def server_with_global_model(state, gathered, num_clients, global_model):
      return body(state, gathered, num_clients, global_model)
    return server_with_global_model

  @tff.tensorflow.computation(state_type, gather.result_type, np.int32)
  def server(state, gathered, num_clients):
    return body(state, gathered, num_clients, None)
  return server


def build_next(initialize, client_type, value_type, gather, server,
               requires_global_model: bool) -> tff.Computation:
  """`next(state, value@CLIENTS[, global_model@SERVER])`: count the clients, gather their
  values, run `server` at the server."""

  def round_at_server(state, value, *global_model):
    num_clients = tff.federated_sum(tff.federated_value(np.int32(1), tff.CLIENTS))
    gathered = gather(value)
    new_state, result, measurements = tff.federated_map(
        server, tff.federated_zip((state, gathered, num_clients, *global_model)))
    return tff.templates.MeasuredProcessOutput(new_state, result, measurements)

  state_type = initialize.type_signature.result
  client_value_type = tff.FederatedType(client_type, tff.CLIENTS)
  if requires_global_model:
    @tff.federated_computation(state_type, client_value_type,
                               tff.FederatedType(value_type, tff.SERVER))
    def next_with_global_model(state, value, global_model):
      return round_at_server(state, value, global_model)
    return next_with_global_model

  @tff.federated_computation(state_type, client_value_type)
  def next_fn(state, value):
    return round_at_server(state, value)
  return next_fn
