"""An exact, memory-bounded gather of all client values at the server.

Why: in TFF's C++ runtime a `tff.federated_aggregate` keeps every
intermediate accumulator until it finishes. A gather that concatenates n
client rows of d floats in ONE aggregate therefore holds stacks of 1, 2, ...,
n rows at once: about n^2 / 2 * d floats (44 GB at n = 100, d = 1.66 M).
Memory is released between separate aggregates of one computation, so this
module splits the gather into G independent aggregates, each collecting the
clients of one group into K separate row stacks.

How a client finds its group ALONE (no server round trip, so the computation
keeps independent aggregations and stays splittable by TFF's mergeable
execution context):

  1. A `tff.federated_map` at the clients flattens the value's float leaves to
     one float32 row [d] and fingerprints it (only the small key leaves the
     map; the value itself is zipped with its key): `tf.fingerprint` (FarmHash64)
     of the row's bytes, combined with the fingerprints of the row-aligned
     payload's leaves if there is a payload. The 64-bit fingerprint, as int64,
     gives the group g = fingerprint mod G.
  2. G `tff.federated_aggregate`s, each with K row stacks. Aggregate g starts
     from a zero that carries g, and its (shared) `accumulate` appends the
     client's flattened row to stack k = (fingerprint div G) mod K (and its
     fingerprint, payload and k to short arrival-ordered lists) when the
     client's group is g; otherwise everything passes on unchanged.
  3. `report` returns the K stacks as K blocks, each with `order`, the
     permutation that sorts its rows by fingerprint, without moving any row
     (TFF's runtime would keep both copies until the computation ends). Read
     a block's rows in the order rows[order] (`blockwise_ops` applies `order`
     one block at a time). Blocks come
     in the order (g, k), so the rows read that way are in a canonical order,
     (group, stack, fingerprint), that depends only on the multiset of client
     values: results do not depend on the order TFF visits clients in, nor on
     how TFF's mergeable context splits them. Rows with the same fingerprint
     are (up to a 2^-64 collision) byte-identical values with identical
     payloads, so their relative order does not matter.

Cost in TFF 0.87's runtime (measured with benchmarks/accumulate_cost.py and
flame_overhead.py; docs/scaling.md):
  - an accumulate that passes its accumulator on keeps no copy, but costs about
    0.3 ms plus time in proportion to the accumulator's bytes (one pass, about
    15 GB/s here). A row stays in its aggregate's accumulator for the rest of
    the fold, so the fold streams about n^2 / 2 rows whatever G and K are;
    splitting the clients over k services (TFF's mergeable context) divides it
    by k;
  - an append makes a new buffer for the stack and TFF keeps the old one until
    the aggregate ends: a stack ending with m rows leaves m (m - 1) / 2 rows of
    garbage, so stacks stay small (`gather_layout`);
  - at the end of each aggregate TFF serializes the accumulator and rebuilds it
    at the server, so many small aggregates (one stack each up to 128 clients)
    hold less at once than one aggregate of many stacks (measured at n = 100).

Payload: a client value may be `(value, payload)` (`with_payload=True`),
where payload is any small structure of tensors (e.g. an int32 flag saying
whether the client is malicious). The payload is stacked along the same
leading axis as the rows, so row i of every block and payload i belong to the
same client.
"""

import collections
import math

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

ROWS = 'rows'
FINGERPRINTS = 'fingerprints'
PAYLOAD = 'payload'
ORDER = 'order'
_GROUP = 'group'
_STACK = 'stack'


def gather_layout(max_clients: int, rows_per_stack: int = 4, max_groups: int = 32) -> tuple:
  """(G, K): G aggregates of K row stacks each, about `rows_per_stack` clients per stack.

  G = min(ceil(max_clients / rows_per_stack), max_groups), K = ceil(max_clients /
  (rows_per_stack * G)): up to 128 clients, one stack per aggregate (K = 1); past
  that G stays at `max_groups` (each aggregate visits every client, n * G
  accumulate calls) and the stacks multiply instead. Why small stacks: an append
  to a stack of m rows makes a new (m + 1)-row buffer, and TFF keeps the old one
  until the aggregate ends. Examples: 10 -> (3, 1), 100 -> (25, 1), 500 -> (32, 4),
  1000 -> (32, 8).
  """
  for name, v in (('max_clients', max_clients), ('rows_per_stack', rows_per_stack),
                  ('max_groups', max_groups)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f'{name} must be a positive int, got {v!r}.')
  num_groups = min(math.ceil(max_clients / rows_per_stack), max_groups)
  return num_groups, math.ceil(max_clients / (rows_per_stack * num_groups))


def leaf_types(value_type) -> list:
  """The tensor types of a TFF type's leaves, in order."""
  if isinstance(value_type, tff.TensorType):
    return [value_type]
  return list(tff.structure.flatten(value_type))


def check_value_type(value_type) -> list:
  """(shape, dtype) of each leaf; every leaf must be a fully defined float tensor."""
  if not (isinstance(value_type, tff.TensorType) or
          tff.types.is_structure_of_tensors(value_type)):
    raise TypeError(f'the value must be a structure of float tensors, got {value_type!r}.')
  specs = []
  for leaf in leaf_types(value_type):
    dtype = tf.dtypes.as_dtype(leaf.dtype)
    if not dtype.is_floating:
      raise TypeError(f'the value must hold only float tensors, got a {dtype.name} leaf '
                      f'in {value_type!r}.')
    if not tf.TensorShape(leaf.shape).is_fully_defined():
      raise TypeError(f'value leaves must have fully defined shapes, got {leaf!r}.')
    specs.append((tuple(leaf.shape), dtype))
  return specs


def leaves_of(value) -> list:
  """The tensors of a TFF Struct or a Python structure, in order."""
  if isinstance(value, tff.structure.Struct):
    return tff.structure.flatten(value)
  return tf.nest.flatten(value)


def flatten_value(value) -> tf.Tensor:
  """The [d] float32 row of one client value (its leaves flattened and concatenated)."""
  parts = [tf.reshape(tf.cast(x, tf.float32), [-1]) for x in leaves_of(value)]
  return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)


def _fingerprint_bytes(x: tf.Tensor) -> tf.Tensor:
  """[8] uint8: tf.fingerprint (FarmHash64) of all of x's bytes."""
  if x.dtype == tf.bool:
    x = tf.cast(x, tf.uint8)
  return tf.fingerprint(tf.reshape(x, [1, -1]))[0]


def fingerprint(row: tf.Tensor, payload=None) -> tf.Tensor:
  """int64 fingerprint of a float32 row [d] (its bytes) and of its payload's leaves."""
  digest = _fingerprint_bytes(row)
  payload_leaves = [] if payload is None else leaves_of(payload)
  if payload_leaves:
    parts = [digest] + [_fingerprint_bytes(tf.convert_to_tensor(x)) for x in payload_leaves]
    digest = _fingerprint_bytes(tf.concat(parts, axis=0))
  return tf.bitcast(digest, tf.int64)


def group_of(fingerprints: tf.Tensor, num_groups: int) -> tf.Tensor:
  """int32 group in [0, num_groups) of int64 fingerprints."""
  return tf.cast(tf.math.floormod(fingerprints, tf.constant(num_groups, tf.int64)), tf.int32)


def stack_of(fingerprints: tf.Tensor, num_groups: int, stacks: int) -> tf.Tensor:
  """int32 stack in [0, stacks) within the group: (fingerprint div G) mod K."""
  quotient = tf.math.floordiv(fingerprints, tf.constant(num_groups, tf.int64))
  return tf.cast(tf.math.floormod(quotient, tf.constant(stacks, tf.int64)), tf.int32)


def _add_leading_dim(type_spec):
  """The type with an unknown leading dimension on every tensor leaf."""
  if isinstance(type_spec, tff.TensorType):
    return tff.TensorType(type_spec.dtype, (None,) + tuple(type_spec.shape))
  return tff.types.type_transformations.transform_type_postorder(
      type_spec, lambda t: ((tff.TensorType(t.dtype, (None,) + tuple(t.shape)), True)
                            if isinstance(t, tff.TensorType) else (t, False)))[0]


def _empty_like(type_spec):
  """A value of `_add_leading_dim(type_spec)` with zero rows, as a Python structure."""
  def empty(t):
    return tf.zeros((0,) + tuple(t.shape), dtype=t.dtype)
  if isinstance(type_spec, tff.TensorType):
    return empty(type_spec)
  return tff.types.structure_from_tensor_type_tree(empty, type_spec)


class GroupedGather:
  """`gather(client_value@CLIENTS)` -> G * K row blocks @SERVER; see the module doc.

  Call the object inside a `tff.federated_computation` (or call it directly
  with a list of client values, as any TFF computation). The result is a
  server-placed list of G lists (one per aggregate g = 0..G-1) of K
  OrderedDicts (one per stack k = 0..K-1); `blocks_of` flattens it to the G * K
  blocks in order (g, k). Block (g, k) holds the clients whose fingerprint f has
  f mod G = g and (f div G) mod K = k:

    rows:         float32 [m, d], the flattened client values, in arrival order;
    fingerprints: int64 [m], the rows' fingerprints, aligned with rows;
    payload:      (only with a payload) the payload structure, leaves
                  [m, ...], aligned with rows;
    order:        int32 [m], the canonical order: rows[order] are sorted
                  by fingerprint.

  The blocks hold n rows in all, the clients' values exactly (float leaves
  cast to float32, as `gathered.GatheredAggregationFactory` does), NaN and Inf included.

  Attributes:
    num_groups: G, the aggregates.
    stacks_per_group: K, the row stacks of one aggregate.
    dim: d, the number of floats in one value.
    specs: (shape, dtype) of each leaf of the value, to unflatten a row.
    block_type: the TFF type of one block.
    result_type: the TFF type of the result's member (G lists of K blocks).
    computation: the `tff.federated_computation` itself.
  """

  def __init__(self, client_value_type, num_groups: int, with_payload: bool = False,
               stacks_per_group: int = 1):
    for name, v in (('num_groups', num_groups), ('stacks_per_group', stacks_per_group)):
      if not isinstance(v, int) or v < 1:
        raise ValueError(f'{name} must be a positive int, got {v!r}.')
    client_value_type = tff.to_type(client_value_type)
    value_type, payload_type = _split_payload_type(client_value_type, with_payload)
    self.num_groups = num_groups
    self.stacks_per_group = stacks_per_group
    self.specs = check_value_type(value_type)
    self.dim = int(sum(int(np.prod(shape)) for shape, _ in self.specs))
    self.with_payload = with_payload
    types = _GatherTypes(client_value_type, payload_type, self.dim, stacks_per_group)
    self.block_type = types.block
    self.result_type = tff.StructWithPythonType(
        [tff.StructWithPythonType([types.block] * stacks_per_group, list)] * num_groups, list)
    self.computation = _gather_computation(client_value_type, types, num_groups,
                                           stacks_per_group, with_payload)

  def __call__(self, client_value):
    return self.computation(client_value)


def _split_payload_type(client_value_type, with_payload: bool) -> tuple:
  """(value type, payload type or None), checking the payload's leaves."""
  if not with_payload:
    return client_value_type, None
  if not (isinstance(client_value_type, tff.StructType) and len(client_value_type) == 2):
    raise TypeError('with_payload=True needs client values (value, payload), got '
                    f'{client_value_type!r}.')
  value_type, payload_type = client_value_type[0], client_value_type[1]
  if not (isinstance(payload_type, tff.TensorType) or
          tff.types.is_structure_of_tensors(payload_type)):
    raise TypeError(f'the payload must be a structure of tensors, got {payload_type!r}.')
  for leaf in leaf_types(payload_type):
    if not tf.TensorShape(leaf.shape).is_fully_defined():
      raise TypeError(f'payload leaves must have fully defined shapes, got {leaf!r}.')
  return value_type, payload_type


class _GatherTypes:
  """The TFF types of the gather's key, item, accumulator and block."""

  def __init__(self, client_value_type, payload_type, dim: int, stacks: int):
    self.payload = payload_type
    self.key = tff.StructWithPythonType([(FINGERPRINTS, tff.TensorType(np.int64)),
                                         (_GROUP, tff.TensorType(np.int32)),
                                         (_STACK, tff.TensorType(np.int32))],
                                        collections.OrderedDict)
    self.item = tff.StructWithPythonType([client_value_type, self.key], tuple)
    rows = tff.TensorType(np.float32, [None, dim])
    small = [(FINGERPRINTS, tff.TensorType(np.int64, [None]))]
    if payload_type is not None:
      small.append((PAYLOAD, _add_leading_dim(payload_type)))
    self.block = tff.StructWithPythonType(
        [(ROWS, rows)] + small + [(ORDER, tff.TensorType(np.int32, [None]))],
        collections.OrderedDict)
    # Arrival-ordered fingerprints, payloads and stack numbers for all K stacks;
    # the rows in K separate stacks, so that an append copies one stack only.
    self.accumulator = tff.StructWithPythonType(
        [(ROWS, tff.StructWithPythonType([rows] * stacks, list))] + small +
        [(_STACK, tff.TensorType(np.int32, [None])), (_GROUP, tff.TensorType(np.int32))],
        collections.OrderedDict)


def _empty_accumulator(types: _GatherTypes, group: int, dim: int, stacks: int):
  acc = collections.OrderedDict([(ROWS, [tf.zeros([0, dim], tf.float32)] * stacks),
                                 (FINGERPRINTS, tf.zeros([0], tf.int64))])
  if types.payload is not None:
    acc[PAYLOAD] = _empty_like(types.payload)
  acc[_STACK] = tf.zeros([0], tf.int32)
  acc[_GROUP] = tf.constant(group, tf.int32)
  return acc


def _append_row(stack: tf.Tensor, value) -> tf.Tensor:
  """The stack with the value's row appended; an empty stack becomes the row itself
  (a reshape, no second copy)."""
  row = flatten_value(value)[tf.newaxis]
  return tf.cond(tf.equal(tf.shape(stack)[0], 0), lambda: row,
                 lambda: tf.concat([stack, row], axis=0))


def _append_small(acc, item, with_payload: bool):
  """Fingerprint, payload and stack number of the item appended (arrival order)."""
  client_value, key = item
  out = collections.OrderedDict(
      [(FINGERPRINTS, tf.concat([acc[FINGERPRINTS], key[FINGERPRINTS][tf.newaxis]], 0))])
  if with_payload:
    out[PAYLOAD] = tf.nest.map_structure(
        lambda a, b: tf.concat([a, tf.convert_to_tensor(b)[tf.newaxis]], axis=0),
        acc[PAYLOAD], client_value[1])
  out[_STACK] = tf.concat([acc[_STACK], key[_STACK][tf.newaxis]], 0)
  return out


def _accumulate(acc, item, with_payload: bool):
  """A client of this aggregate's group appends to its stack; others pass everything on."""
  client_value, key = item
  value = client_value[0] if with_payload else client_value
  mine = tf.equal(key[_GROUP], acc[_GROUP])
  rows = [tf.cond(tf.logical_and(mine, tf.equal(key[_STACK], k)),
                  lambda s=stack: _append_row(s, value), lambda s=stack: s)
          for k, stack in enumerate(acc[ROWS])]
  small_keys = [k for k in acc if k not in (ROWS, _GROUP)]
  small = tf.cond(mine, lambda: _append_small(acc, item, with_payload),
                  lambda: collections.OrderedDict((k, acc[k]) for k in small_keys))
  return collections.OrderedDict([(ROWS, rows)] + [(k, small[k]) for k in small_keys] +
                                 [(_GROUP, acc[_GROUP])])


def _merge(a, b):
  """Two partial accumulators of one group (stack by stack, arrival lists concatenated)."""
  rows = [tf.concat([x, y], axis=0) for x, y in zip(a[ROWS], b[ROWS])]
  rest = tf.nest.map_structure(lambda x, y: tf.concat([x, y], axis=0),
                               {k: a[k] for k in a if k not in (ROWS, _GROUP)},
                               {k: b[k] for k in b if k not in (ROWS, _GROUP)})
  return collections.OrderedDict([(ROWS, rows)] +
                                 [(k, rest[k]) for k in a if k not in (ROWS, _GROUP)] +
                                 [(_GROUP, a[_GROUP])])


def _report(acc, with_payload: bool) -> list:
  """The K blocks: each stack's rows as they are (no row moves: TFF would keep both
  copies), its fingerprints and payloads, and `order`, which sorts them by fingerprint."""
  blocks = []
  for k, rows in enumerate(acc[ROWS]):
    in_stack = tf.equal(acc[_STACK], k)
    fps = tf.boolean_mask(acc[FINGERPRINTS], in_stack)
    block = collections.OrderedDict([(ROWS, rows), (FINGERPRINTS, fps)])
    if with_payload:
      block[PAYLOAD] = tf.nest.map_structure(lambda x, m=in_stack: tf.boolean_mask(x, m),
                                             acc[PAYLOAD])
    block[ORDER] = tf.argsort(fps, stable=True, direction='ASCENDING')
    blocks.append(block)
  return blocks


def _gather_computation(client_value_type, types: _GatherTypes, num_groups: int,
                        stacks: int, with_payload: bool):
  """The federated computation: a key per client, then G independent aggregates."""
  dim = types.block[ROWS].shape[1]

  @tff.tensorflow.computation(client_value_type)
  def client_key(client_value):
    # Only the (small) key is computed here: the client's value reaches the
    # aggregates through a federated_zip, by reference, not as a TF output
    # (each TF output is a new buffer in TFF's runtime).
    value, payload = (client_value[0], client_value[1]) if with_payload else (client_value,
                                                                               None)
    fp = fingerprint(flatten_value(value), payload)
    return collections.OrderedDict([(FINGERPRINTS, fp), (_GROUP, group_of(fp, num_groups)),
                                    (_STACK, stack_of(fp, num_groups, stacks))])

  def zero_for(group):
    @tff.tensorflow.computation
    def zero():
      return _empty_accumulator(types, group, dim, stacks)
    return zero

  @tff.tensorflow.computation(types.accumulator, types.item)
  def accumulate(acc, item):
    return _accumulate(acc, item, with_payload)

  @tff.tensorflow.computation(types.accumulator, types.accumulator)
  def merge(a, b):
    return _merge(a, b)

  @tff.tensorflow.computation(types.accumulator)
  def report(acc):
    return _report(acc, with_payload)

  zeros = [zero_for(g) for g in range(num_groups)]

  @tff.federated_computation(tff.FederatedType(client_value_type, tff.CLIENTS))
  def gather(client_value):
    items = tff.federated_zip((client_value, tff.federated_map(client_key, client_value)))
    blocks = [tff.federated_aggregate(items, zeros[g](), accumulate, merge, report)
              for g in range(num_groups)]
    return tff.federated_zip(blocks)
  return gather


def build_grouped_gather(client_value_type, num_groups: int, with_payload: bool = False,
                         stacks_per_group: int = 1) -> GroupedGather:
  """A `GroupedGather` of client values of `client_value_type`: G aggregates of K stacks.

  `client_value_type` is the (unplaced) type of one client's value: a
  structure of fully defined float tensors, or with `with_payload=True` a
  2-tuple `(value, payload)` whose payload is any structure of fully defined
  tensors. Pick (G, K) with `gather_layout(max_clients)`.
  """
  return GroupedGather(client_value_type, num_groups, with_payload, stacks_per_group)


def blocks_of(result) -> list:
  """The result of a `GroupedGather` as a flat Python list of OrderedDicts, in order (g, k)."""
  if isinstance(result, tff.structure.Struct):
    result = tff.structure.to_odict_or_tuple(result, recursive=True)
  return [block for group in result for block in group]
