"""grouped_gather through TFF's local C++ runtime against NumPy: the exact multiset of rows."""

import collections
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_flame import blockwise_ops
from tff_flame import grouped_gather
from tff_flame import stacked_ops

VALUE_TYPE = tff.StructWithPythonType(
    [tff.TensorType(np.float32, [2, 3]), tff.TensorType(np.float32, [4])], list)
DIM = 10
LABELLED_TYPE = tff.StructWithPythonType([VALUE_TYPE, tff.TensorType(np.int32)], tuple)


def as_value(row):
  return [row[:6].reshape(2, 3), row[6:]]


def client_rows(rng, n):
  rows = rng.normal(size=(n, DIM)).astype(np.float32)
  if n >= 3:
    rows[1] = rows[0]  # a duplicate update (same fingerprint without payload)
  if n >= 10:
    rows[3, 2] = np.nan
    rows[4, 0] = np.inf
    rows[5] = -np.inf
    rows[6] = 0.0
    rows[7] = 0.0  # a duplicate zero row
    rows[8] = 3e38
  return rows


def sorted_bytes(rows):
  """The multiset of rows as a sorted list of their bytes (NaN compares by bits)."""
  return sorted(np.ascontiguousarray(r).tobytes() for r in np.asarray(rows, np.float32))


def gathered_rows(blocks):
  return np.concatenate([np.asarray(b['rows']).reshape(-1, DIM) for b in blocks])


@pytest.fixture(scope='module')
def gathers():
  return {}


def canonical(blocks):
  """The blocks as NumPy, every field read through the block's `order` (and `order` dropped)."""
  out = []
  for block in grouped_gather.blocks_of(blocks):
    order = np.asarray(block['order']).reshape(-1)
    assert sorted(order.tolist()) == list(range(len(order)))
    out.append({k: tf.nest.map_structure(lambda x: np.asarray(x)[order], v)
                for k, v in block.items() if k != 'order'})
  return out


def get_gather(cache, g, with_payload, k=1):
  """The gather (G = g, K = k), returning its blocks in canonical order (see `canonical`)."""
  key = (g, k, with_payload)
  if key not in cache:
    gather = grouped_gather.build_grouped_gather(
        LABELLED_TYPE if with_payload else VALUE_TYPE, g, with_payload=with_payload,
        stacks_per_group=k)
    cache[key] = lambda values: canonical(gather(values))
  return cache[key]


@pytest.mark.parametrize('n', [1, 2, 3, 10, 57])
@pytest.mark.parametrize('g,k', [(1, 1), (3, 1), (8, 1), (1, 6), (3, 5)])
def test_same_multiset_of_rows_and_aligned_payloads(gathers, n, g, k):
  rng = np.random.default_rng(10 * n + g)
  rows = client_rows(rng, n)
  gather = get_gather(gathers, g, with_payload=True, k=k)
  # Payload: the client's index, so alignment can be checked row by row; the
  # duplicate row 1 gets the same payload as row 0 (fully identical clients).
  payload = np.arange(n, dtype=np.int32)
  if n >= 3:
    payload[1] = 0
  blocks = gather([(as_value(r), p) for r, p in zip(rows, payload)])
  assert len(blocks) == g * k
  got_rows = gathered_rows(blocks)
  got_payload = np.concatenate([np.asarray(b['payload']).reshape(-1) for b in blocks])
  assert got_rows.shape == (n, DIM) and got_payload.shape == (n,)
  assert sorted_bytes(got_rows) == sorted_bytes(rows)
  for row, p in zip(got_rows, got_payload):
    assert row.tobytes() == rows[p].tobytes()
  assert sorted(got_payload.tolist()) == sorted(payload.tolist())
  for index, block in enumerate(blocks):
    fps = np.asarray(block['fingerprints']).reshape(-1)
    assert (fps[1:] >= fps[:-1]).all()  # canonical order inside a block
    group, stack = divmod(index, k)
    assert (np.mod(fps, g) == group).all()  # the group is fingerprint mod G
    assert (np.mod(np.floor_divide(fps, g), k) == stack).all()  # the stack (f div G) mod K


@pytest.mark.parametrize('n', [1, 2, 3, 10, 57])
def test_without_payload(gathers, n):
  rows = client_rows(np.random.default_rng(n), n)
  blocks = get_gather(gathers, 4, with_payload=False)([as_value(r) for r in rows])
  assert set(blocks[0]) == {'rows', 'fingerprints'}
  assert sorted_bytes(gathered_rows(blocks)) == sorted_bytes(rows)
  # Identical updates have identical fingerprints and land together.
  if n >= 3:
    fps = np.concatenate([np.asarray(b['fingerprints']).reshape(-1) for b in blocks])
    assert len(set(fps.tolist())) == len({r.tobytes() for r in rows})


def test_result_does_not_depend_on_client_order(gathers):
  rng = np.random.default_rng(4)
  rows = client_rows(rng, 23)
  gather = get_gather(gathers, 3, with_payload=True, k=5)
  payload = np.arange(23, dtype=np.int32) % 5
  first = gather([(as_value(r), p) for r, p in zip(rows, payload)])
  order = rng.permutation(23)
  second = gather([(as_value(rows[i]), payload[i]) for i in order])
  for a, b in zip(first, second):
    for key in ('rows', 'fingerprints', 'payload'):
      assert np.asarray(a[key]).tobytes() == np.asarray(b[key]).tobytes()


def test_fingerprint_is_tf_fingerprint_of_the_row_bytes_and_payload(gathers):
  rows = client_rows(np.random.default_rng(6), 5)
  blocks = get_gather(gathers, 1, with_payload=False)([as_value(r) for r in rows])
  want = sorted(tf.bitcast(tf.fingerprint(tf.constant(r)[tf.newaxis])[0], tf.int64).numpy()
                for r in rows)
  assert np.asarray(blocks[0]['fingerprints']).tolist() == want
  # The same value with different payloads: different fingerprints.
  with_flag = [grouped_gather.fingerprint(tf.constant(rows[0]), tf.constant(f)).numpy()
               for f in (0, 1)]
  assert with_flag[0] != with_flag[1]


def test_structured_payload_and_float64_leaves():
  value_type = tff.StructWithPythonType(
      [tff.TensorType(np.float64, [3]), tff.TensorType(np.float32, [2])], list)
  payload_type = tff.StructWithPythonType(
      [('flag', tff.TensorType(np.int32)), ('tag', tff.TensorType(np.float32, [2]))],
      collections.OrderedDict)
  gather = grouped_gather.build_grouped_gather(
      tff.StructWithPythonType([value_type, payload_type], tuple), 2, with_payload=True)
  rng = np.random.default_rng(8)
  values = [[rng.normal(size=3), rng.normal(size=2).astype(np.float32)] for _ in range(6)]
  payloads = [collections.OrderedDict(flag=np.int32(i), tag=np.full(2, i, np.float32))
              for i in range(6)]
  blocks = grouped_gather.blocks_of(gather(list(zip(values, payloads))))
  for block in blocks:
    for row, flag, tag in zip(np.asarray(block['rows']).reshape(-1, 5),
                              np.asarray(block['payload']['flag']).reshape(-1),
                              np.asarray(block['payload']['tag']).reshape(-1, 2)):
      expected = np.concatenate([values[flag][0].astype(np.float32), values[flag][1]])
      np.testing.assert_array_equal(row, expected)
      np.testing.assert_array_equal(tag, [flag, flag])
  assert sum(np.asarray(b['rows']).reshape(-1, 5).shape[0] for b in blocks) == 6


def test_composes_in_a_federated_computation_with_blockwise_ops():
  """The server step sees the G blocks; a Gram matrix from them equals NumPy's."""
  value_type = tff.TensorType(np.float32, [7])
  gather = grouped_gather.build_grouped_gather(value_type, 3, stacks_per_group=2)

  @tff.tensorflow.computation(gather.result_type)
  def server(gathered):
    blocks = grouped_gather.blocks_of(gathered)
    gram = blockwise_ops.gram_matrix(blocks, tf.float64)
    norms = blockwise_ops.l2_norms(blocks)
    return gram, norms, blockwise_ops.concat_rows(blocks)

  @tff.federated_computation(tff.FederatedType(value_type, tff.CLIENTS))
  def run(values):
    return tff.federated_map(server, gather(values))

  rng = np.random.default_rng(9)
  rows = rng.normal(size=(11, 7)).astype(np.float32)
  rows[2] = 3e38
  gram, norms, stacked = run(list(rows))
  stacked = np.asarray(stacked)
  assert sorted_bytes(stacked) == sorted_bytes(rows)
  x64 = stacked.astype(np.float64)
  np.testing.assert_allclose(gram, x64 @ x64.T, rtol=1e-12)
  np.testing.assert_allclose(norms, np.linalg.norm(x64, axis=1), rtol=1e-6)
  assert np.isfinite(gram).all()


def test_gather_layout():
  assert grouped_gather.gather_layout(1) == (1, 1)
  assert grouped_gather.gather_layout(10) == (3, 1)
  assert grouped_gather.gather_layout(100) == (25, 1)
  assert grouped_gather.gather_layout(500) == (32, 4)
  assert grouped_gather.gather_layout(1000) == (32, 8)
  assert grouped_gather.gather_layout(10, rows_per_stack=2, max_groups=2) == (2, 3)
  with pytest.raises(ValueError):
    grouped_gather.gather_layout(0)


def test_bad_types():
  with pytest.raises(TypeError, match='float'):
    grouped_gather.build_grouped_gather(tff.TensorType(np.int32, [3]), 2)
  with pytest.raises(TypeError, match='fully defined'):
    grouped_gather.build_grouped_gather(tff.TensorType(np.float32, [None]), 2)
  with pytest.raises(TypeError, match='payload'):
    grouped_gather.build_grouped_gather(tff.TensorType(np.float32, [3]), 2, with_payload=True)
  with pytest.raises(ValueError, match='num_groups'):
    grouped_gather.build_grouped_gather(tff.TensorType(np.float32, [3]), 0)
  with pytest.raises(ValueError, match='stacks_per_group'):
    grouped_gather.build_grouped_gather(tff.TensorType(np.float32, [3]), 1, stacks_per_group=0)


def test_a_row_unflattens_with_the_gathers_specs():
  gather = grouped_gather.build_grouped_gather(VALUE_TYPE, 1)
  row = np.arange(DIM, dtype=np.float32)
  leaves = stacked_ops.unflatten_vector(tf.constant(row), gather.specs)
  np.testing.assert_array_equal(leaves[0].numpy(), row[:6].reshape(2, 3))
  np.testing.assert_array_equal(leaves[1].numpy(), row[6:])
  assert gather.dim == DIM


def test_splittable_by_the_mergeable_execution_context():
  """Clients place themselves: the G aggregates are independent, so TFF can split the gather."""
  from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler  # pylint: disable=g-import-not-at-top
  gather = grouped_gather.build_grouped_gather(LABELLED_TYPE, 3, with_payload=True)
  form = mergeable_comp_compiler.compile_to_mergeable_comp_form(gather.computation)
  assert type(form).__name__ == 'MergeableCompForm'


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
