"""TF-ops HDBSCAN against the `hdbscan` package on 500+ distance matrices."""

import pathlib
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from hdbscan._hdbscan_linkage import label, mst_linkage_core
from hdbscan._hdbscan_reachability import mutual_reachability
from hdbscan.hdbscan_ import _tree_to_labels

from oracles import cosine_distances_numpy as cosine
from oracles import euclidean_distances_numpy as euclidean
from oracles import hdbscan_labels_numpy
from oracles import hdbscan_labels_py_function
from tff_flame import clustering

_labels_tf = tf.function(
    clustering.hdbscan_labels,
    input_signature=[tf.TensorSpec([None, None], tf.float64),
                     tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)])


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
  """Same noise set and the same clusters up to renumbering."""
  if a.shape != b.shape or not np.array_equal(a < 0, b < 0):
    return False
  kept = a >= 0
  pairs = set(zip(a[kept].tolist(), b[kept].tolist()))
  return len(pairs) == len(set(a[kept].tolist())) == len(set(b[kept].tolist()))


def package_labels_stable_sort(d, min_cluster_size, min_samples):
  """The package's own pipeline, but with a stable sort of spanning-tree edges."""
  n = d.shape[0]
  min_samples = max(min(n - 1, min_samples), 1)
  tree = mst_linkage_core(mutual_reachability(d.copy(), min_samples))
  tree = tree[np.argsort(tree.T[2], kind='stable')]
  with np.errstate(all='ignore'):
    return _tree_to_labels(None, label(tree), min_cluster_size, allow_single_cluster=True)[0]


def random_case(rng, kind):
  n = int(rng.integers(2, 201)) if rng.random() < 0.3 else int(rng.integers(2, 60))
  dim = int(rng.integers(1, 8))
  if kind == 'random':
    d = euclidean(rng.normal(size=(n, dim)))
  elif kind == 'clustered':
    k = int(rng.integers(1, 5))
    centers = rng.normal(size=(k, dim)) * 6
    d = euclidean(centers[rng.integers(0, k, n)] + rng.normal(size=(n, dim)))
  elif kind == 'malicious_minority':
    # Benign updates share a direction, a minority pushes another one: cosine distances.
    benign = np.ones(dim + 3) + 0.3 * rng.normal(size=(n, dim + 3))
    num_bad = int(rng.integers(0, (n - 1) // 2 + 1))
    benign[:num_bad] = -np.ones(dim + 3) + 0.05 * rng.normal(size=(num_bad, dim + 3))
    d = cosine(benign)
  elif kind == 'ties':
    d = np.round(euclidean(rng.normal(size=(n, dim))), 1)
  else:  # duplicates: points on a small grid, many identical
    x = rng.integers(0, 3, size=(n, dim)).astype(float)
    d = np.abs(x[:, None] - x[None]).sum(-1)
  return d


KINDS_PACKAGE = ('random', 'clustered', 'malicious_minority')


@pytest.mark.parametrize('kind', KINDS_PACKAGE)
def test_matches_package_any_min_cluster_size(kind):
  rng = np.random.default_rng(zlib.crc32(kind.encode()))
  for case in range(100):
    d = random_case(rng, kind)
    n = d.shape[0]
    # min_samples > 1 makes equal mutual-reachability weights common, and with
    # them the package's tie-order dependence (see the ties tests below); it is
    # exercised here at FLAME's min_cluster_size, where tie order does not matter.
    flame_size = case % 2 == 1
    mcs = n // 2 + 1 if flame_size else int(rng.integers(2, max(2, n) + 2))
    ms = int(rng.integers(1, 4)) if flame_size else 1
    expected = hdbscan_labels_numpy(d, max(mcs, 2), ms)
    got = _labels_tf(d, max(mcs, 2), ms).numpy()
    assert same_partition(expected, got), (kind, case, n, mcs, ms, expected, got)


@pytest.mark.parametrize('kind', ('ties', 'duplicates'))
def test_matches_package_with_ties_at_flame_min_cluster_size(kind):
  """With min_cluster_size = n//2 + 1 the package's label does not depend on tie order."""
  rng = np.random.default_rng(7 + len(kind))
  for case in range(100):
    d = random_case(rng, kind)
    mcs = d.shape[0] // 2 + 1
    with np.errstate(all='ignore'):
      expected = hdbscan_labels_numpy(d, max(mcs, 2), 1)
    got = _labels_tf(d, max(mcs, 2), 1).numpy()
    assert same_partition(expected, got), (kind, case, d.shape[0], expected, got)


@pytest.mark.parametrize('kind', ('ties', 'duplicates', 'clustered'))
def test_matches_package_pipeline_with_ties_at_small_min_cluster_size(kind):
  """Small clusters + equal edge weights: the package's answer depends on NumPy's
  unstable argsort, so the oracle is the package's own functions with a stable sort."""
  rng = np.random.default_rng(11 + len(kind))
  for case in range(60):
    d = random_case(rng, kind)
    n = d.shape[0]
    mcs = int(rng.integers(2, max(3, n // 2 + 1)))
    ms = int(rng.integers(1, 4))
    expected = package_labels_stable_sort(d, mcs, ms)
    got = _labels_tf(d, mcs, ms).numpy()
    assert same_partition(expected, got), (kind, case, n, mcs, expected, got)


def test_flame_case_admits_benign_majority_and_rejects_attackers():
  rng = np.random.default_rng(0)
  benign = np.ones(20) + 0.2 * rng.normal(size=(14, 20))
  attackers = -np.ones(20) + 0.01 * rng.normal(size=(6, 20))
  d = cosine(np.concatenate([benign, attackers]))
  got = _labels_tf(d, 11, 1).numpy()
  assert (got[14:] == -1).all()
  assert (got[:14] >= 0).sum() >= 11
  assert same_partition(hdbscan_labels_numpy(d, 11, 1), got)


def test_small_n():
  assert _labels_tf(np.zeros((1, 1)), 2, 1).numpy().tolist() == [-1]
  assert _labels_tf(np.zeros((0, 0)), 2, 1).numpy().tolist() == []
  two = np.array([[0.0, 0.3], [0.3, 0.0]])
  assert _labels_tf(two, 2, 1).numpy().tolist() == [0, 0]
  assert hdbscan_labels_numpy(two, 2, 1).tolist() == [0, 0]


def test_labels_inside_tff_computation():
  """The TF version runs in TFF's C++ worker (no py_function there)."""
  import tensorflow_federated as tff
  d = cosine(np.random.default_rng(3).normal(size=(9, 4)) + 2.0)

  @tff.tensorflow.computation(tff.TensorType(np.float64, [9, 9]))
  def labels_in_tff(distances):
    return clustering.hdbscan_labels(distances, 5, 1)

  assert same_partition(hdbscan_labels_numpy(d, 5, 1), np.asarray(labels_in_tff(d)))


def test_py_function_oracle_matches_package():
  d = euclidean(np.random.default_rng(5).normal(size=(12, 2)))
  fn = tf.function(lambda x: hdbscan_labels_py_function(x, 3, 1))
  np.testing.assert_array_equal(fn(tf.constant(d)).numpy(), hdbscan_labels_numpy(d, 3, 1))


def test_rejects_bad_parameters():
  with pytest.raises(ValueError, match='min_cluster_size'):
    clustering.hdbscan_labels(np.zeros((3, 3)), 1)
  with pytest.raises(ValueError, match='min_samples'):
    clustering.hdbscan_labels(np.zeros((3, 3)), 2, 0)


def test_float32_and_float64_distances_give_the_same_labels():
  """Updates are float32, so their distance matrices may be too."""
  rng = np.random.default_rng(7)
  points = np.concatenate([rng.normal(size=(7, 4)), 5 + rng.normal(size=(4, 4))])
  d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
  want = clustering.hdbscan_labels(tf.constant(d, tf.float64), 6, 1).numpy()
  got = clustering.hdbscan_labels(tf.constant(d.astype(np.float32)), 6, 1).numpy()
  np.testing.assert_array_equal(got, want)
  assert same_partition(hdbscan_labels_numpy(d, 6, 1), got)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
