"""An exact, memory-bounded gather of all client values at the server.

Why: in TFF's C++ runtime a `tff.federated_aggregate` keeps every
intermediate accumulator until it finishes. A gather that concatenates n
client rows of d floats in ONE aggregate therefore holds stacks of 1, 2, ...,
n rows at once: about n^2 / 2 * d floats (44 GB at n = 100, d = 1.66 M).
Memory is released between separate aggregates of one computation, so this
module splits the gather into G independent aggregates that each concatenate
only the clients of one group.

How a client finds its group ALONE (no server round trip, so the computation
keeps independent aggregations and stays splittable by TFF's mergeable
execution context):

  1. A `tff.federated_map` at the clients flattens the value's float leaves to
     one float32 row [d] and fingerprints it (only the small key leaves the
     map; the value itself is zipped with its key): `tf.fingerprint` (FarmHash64)
     of the row's bytes, combined with the fingerprints of the row-aligned
     payload's leaves if there is a payload. The 64-bit fingerprint, as int64,
     gives the group g = fingerprint mod G.
  2. G `tff.federated_aggregate`s. Aggregate g starts from a zero that carries
     g, and its (shared) `accumulate` appends the client's flattened row,
     fingerprint and payload when the client's group is g, else returns the
     accumulator unchanged (a client outside the group adds nothing).
  3. `report` adds `order`, the permutation that sorts the group's rows by
     fingerprint, without moving any row (TFF's runtime would keep both
     copies until the computation ends). Read block g's rows in the order
     rows[order] (`blockwise_ops` applies `order` one block at a time). Groups come in the order g = 0..G-1, so the rows
     read that way are in a canonical order, (group, fingerprint), that
     depends only on the multiset of client values: results do not depend on
     the order TFF visits clients in. Rows with the same fingerprint are (up
     to a 2^-64 collision) byte-identical values with identical payloads, so
     their relative order does not matter.

Memory (measured with benchmarks/grouped_gather_memory.py): the runtime
gives every `accumulate` result a new buffer, also when a client outside the
group passes the accumulator through unchanged, and keeps them all until the
aggregate ends. Aggregate g therefore holds about n * m_g / 2 rows (the
accumulator grows from 0 to m_g rows over the n client visits), and the
aggregates run one after another, so the gather's peak is about

  n * max_g(m_g) / 2 * d floats  (vs n^2 / 2 * d for one concatenating gather)

on top of a floor of a few n * d floats (the client values, the final
accumulators, the sorted G blocks). `num_groups_for` picks G = ceil(n / 4) (at most 32):
groups of 4 clients on average, so that the largest group stays near 10 and
the peak near 5 n * d floats. The price is time: each of the G aggregates
visits every client, n * G accumulate calls in all (n^2 / 4).

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


def num_groups_for(max_clients: int, rows_per_group: int = 4, max_groups: int = 32) -> int:
  """G = min(ceil(max_clients / rows_per_group), max_groups).

  Clients fall into groups by fingerprint, like balls into G bins: a group
  holds Poisson(n / G) clients, and the largest of G groups rarely more than
  n / G + 3 sqrt(n / G) (about 10 for 4 per group). Aggregate g holds about
  n * m_g / 2 rows (see the module doc), so the gather's peak is about
  n * 5 * d floats, linear in n, instead of n^2 / 2 * d floats. A larger G
  lowers memory (down to the floor of a few n * d floats) but costs n
  accumulate calls per group, and the first call loads G small TF
  computations: `max_groups` caps that for a large `max_clients` (past
  max_groups * rows_per_group clients the groups grow to n / max_groups).
  Examples: 10 -> 3, 40 -> 10, 100 -> 25, 1000 -> 32.
  """
  for name, v in (('max_clients', max_clients), ('rows_per_group', rows_per_group),
                  ('max_groups', max_groups)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f'{name} must be a positive int, got {v!r}.')
  return max(1, min(max_groups, math.ceil(max_clients / rows_per_group)))


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
  """`gather(client_value@CLIENTS)` -> G group blocks @SERVER; see the module doc.

  Call the object inside a `tff.federated_computation` (or call it directly
  with a list of client values, as any TFF computation). The result is a
  server-placed list of G OrderedDicts, one per group g = 0..G-1:

    rows:         float32 [m_g, d], the flattened client values of group g,
                  in arrival order;
    fingerprints: int64 [m_g], the rows' fingerprints, aligned with rows;
    payload:      (only with a payload) the payload structure, leaves
                  [m_g, ...], aligned with rows;
    order:        int32 [m_g], the canonical order: rows[order] are sorted
                  by fingerprint.

  sum_g m_g = n, and the rows are the clients' values exactly (float leaves
  cast to float32, as `gathered.GatheredAggregationFactory` does), NaN and Inf included.

  Attributes:
    num_groups: G.
    dim: d, the number of floats in one value.
    specs: (shape, dtype) of each leaf of the value, to unflatten a row.
    block_type: the TFF type of one group's block.
    result_type: the TFF type of the result's member (a list of G blocks).
    computation: the `tff.federated_computation` itself.
  """

  def __init__(self, client_value_type, num_groups: int, with_payload: bool = False):
    if not isinstance(num_groups, int) or num_groups < 1:
      raise ValueError(f'num_groups must be a positive int, got {num_groups!r}.')
    client_value_type = tff.to_type(client_value_type)
    value_type, payload_type = split_client_type(client_value_type, with_payload)
    self.num_groups = num_groups
    self.specs = check_value_type(value_type)
    self.dim = int(sum(int(np.prod(shape)) for shape, _ in self.specs))
    self.with_payload = with_payload
    self.block_type, accumulator_type = block_and_accumulator_types(self.dim, payload_type)
    self.result_type = tff.StructWithPythonType([self.block_type] * num_groups, list)
    self.computation = build_gather_computation(client_value_type, accumulator_type, num_groups,
                                                self.dim, payload_type)

  def __call__(self, client_value):
    return self.computation(client_value)


def split_client_type(client_value_type, with_payload: bool) -> tuple:
  """(value type, payload type or None) of a client's value, checked."""
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


def block_and_accumulator_types(dim: int, payload_type) -> tuple:
  """The TFF types of one group's block (rows, fingerprints, payload, order) and of its
  accumulator (rows, fingerprints, payload, group)."""
  fields = [(ROWS, tff.TensorType(np.float32, [None, dim])),
            (FINGERPRINTS, tff.TensorType(np.int64, [None]))]
  if payload_type is not None:
    fields.append((PAYLOAD, _add_leading_dim(payload_type)))
  block_type = tff.StructWithPythonType(
      fields + [(ORDER, tff.TensorType(np.int32, [None]))], collections.OrderedDict)
  accumulator_type = tff.StructWithPythonType(
      fields + [(_GROUP, tff.TensorType(np.int32))], collections.OrderedDict)
  return block_type, accumulator_type


def _split_value(client_value, with_payload: bool) -> tuple:
  return (client_value[0], client_value[1]) if with_payload else (client_value, None)


def build_client_key(client_value_type, num_groups: int,
                     with_payload: bool) -> tff.Computation:
  """Each client's key: the fingerprint of its value (and payload) and its group."""

  @tff.tensorflow.computation(client_value_type)
  def client_key(client_value):
    # Only the (small) key is computed here: the client's value reaches the
    # aggregates through a federated_zip, by reference, not as a TF output
    # (each TF output is a new buffer in TFF's runtime).
    value, payload = _split_value(client_value, with_payload)
    fp = fingerprint(flatten_value(value), payload)
    return collections.OrderedDict([(FINGERPRINTS, fp), (_GROUP, group_of(fp, num_groups))])

  return client_key


def build_zero(group: int, dim: int, payload_type) -> tff.Computation:
  """The empty accumulator of aggregate `group`."""

  @tff.tensorflow.computation
  def zero():
    acc = collections.OrderedDict([(ROWS, tf.zeros([0, dim], tf.float32)),
                                   (FINGERPRINTS, tf.zeros([0], tf.int64))])
    if payload_type is not None:
      acc[PAYLOAD] = _empty_like(payload_type)
    acc[_GROUP] = tf.constant(group, tf.int32)
    return acc

  return zero


def _append(acc, item, with_payload: bool) -> collections.OrderedDict:
  """The accumulator with the client's row, fingerprint and payload appended."""
  client_value, key = item
  value, payload = _split_value(client_value, with_payload)
  out = collections.OrderedDict([
      (ROWS, tf.concat([acc[ROWS], flatten_value(value)[tf.newaxis]], axis=0)),
      (FINGERPRINTS, tf.concat([acc[FINGERPRINTS], key[FINGERPRINTS][tf.newaxis]], 0))])
  if with_payload:
    out[PAYLOAD] = tf.nest.map_structure(
        lambda a, b: tf.concat([a, tf.convert_to_tensor(b)[tf.newaxis]], axis=0),
        acc[PAYLOAD], payload)
  out[_GROUP] = acc[_GROUP]
  return out


def build_accumulate(accumulator_type, item_type, with_payload: bool) -> tff.Computation:
  """Appends a client of the accumulator's group; passes the others through unchanged."""

  @tff.tensorflow.computation(accumulator_type, item_type)
  def accumulate(acc, item):
    return tf.cond(tf.equal(item[1][_GROUP], acc[_GROUP]),
                   lambda: _append(acc, item, with_payload), lambda: acc)

  return accumulate


def build_merge(accumulator_type) -> tff.Computation:
  """Two partial accumulators of one group, concatenated (the mergeable context's step)."""

  @tff.tensorflow.computation(accumulator_type, accumulator_type)
  def merge(a, b):
    out = tf.nest.map_structure(lambda x, y: tf.concat([x, y], axis=0),
                                {k: a[k] for k in a if k != _GROUP},
                                {k: b[k] for k in b if k != _GROUP})
    return collections.OrderedDict(
        [(k, out[k]) for k in a if k != _GROUP] + [(_GROUP, a[_GROUP])])

  return merge


def build_report(accumulator_type) -> tff.Computation:
  """The group's block: its rows as they arrived, and `order`, which sorts them."""

  @tff.tensorflow.computation(accumulator_type)
  def report(acc):
    # No row is moved here (a copy of every row would stay alive until the
    # computation ends): consumers read rows through `order`.
    out = collections.OrderedDict((k, acc[k]) for k in acc if k != _GROUP)
    out[ORDER] = tf.argsort(acc[FINGERPRINTS], stable=True, direction='ASCENDING')
    return out

  return report


def build_gather_computation(client_value_type, accumulator_type, num_groups: int, dim: int,
                             payload_type) -> tff.Computation:
  """`gather(client_value@CLIENTS)` -> the G blocks @SERVER: one independent
  `federated_aggregate` per group over (value, key) of every client."""
  with_payload = payload_type is not None
  client_key = build_client_key(client_value_type, num_groups, with_payload)
  key_type = client_key.type_signature.result
  item_type = tff.StructWithPythonType([client_value_type, key_type], tuple)
  accumulate = build_accumulate(accumulator_type, item_type, with_payload)
  merge = build_merge(accumulator_type)
  report = build_report(accumulator_type)
  zeros = [build_zero(g, dim, payload_type) for g in range(num_groups)]

  @tff.federated_computation(tff.FederatedType(client_value_type, tff.CLIENTS))
  def gather(client_value):
    items = tff.federated_zip((client_value, tff.federated_map(client_key, client_value)))
    blocks = [tff.federated_aggregate(items, zeros[g](), accumulate, merge, report)
              for g in range(num_groups)]
    return tff.federated_zip(blocks)

  return gather


def build_grouped_gather(client_value_type, num_groups: int,
                         with_payload: bool = False) -> GroupedGather:
  """A `GroupedGather` of client values of `client_value_type` into `num_groups` groups.

  `client_value_type` is the (unplaced) type of one client's value: a
  structure of fully defined float tensors, or with `with_payload=True` a
  2-tuple `(value, payload)` whose payload is any structure of fully defined
  tensors. Pick `num_groups` with `num_groups_for(max_clients)`.
  """
  return GroupedGather(client_value_type, num_groups, with_payload)


def blocks_of(result) -> list:
  """The result of a `GroupedGather` as a Python list of OrderedDicts (in TF or NumPy)."""
  if isinstance(result, tff.structure.Struct):
    result = tff.structure.to_odict_or_tuple(result, recursive=True)
  return list(result)
