"""FlameFactory through TFF: plain process, FedAvg (unweighted, weighted, model space)."""

import numpy as np
import pathlib
import pytest
import sys
import tensorflow_federated as tff

from oracles import flame_round_numpy
from tff_flame import FlameFactory

VALUE_TYPE = tff.StructWithPythonType(
    [tff.TensorType(np.float32, [3, 2]), tff.TensorType(np.float32, [4])], list)


def client_values(rng, n_benign, n_bad):
  direction = rng.normal(size=10)
  rows = np.concatenate([direction + 0.4 * rng.normal(size=(n_benign, 10)),
                         -4 * direction + 0.01 * rng.normal(size=(n_bad, 10))]).astype(np.float32)
  return rows, [[r[:6].reshape(3, 2), r[6:]] for r in rows]


@pytest.fixture(scope='module')
def noiseless():
  return FlameFactory(noise_lambda=0.0).create(VALUE_TYPE)


def test_type_signature(noiseless):
  assert isinstance(noiseless, tff.templates.AggregationProcess)
  assert noiseless.next.type_signature.result.result.member == VALUE_TYPE
  assert not noiseless.is_weighted


def test_next_matches_numpy_and_rejects_attackers(noiseless):
  rows, values = client_values(np.random.default_rng(0), 7, 3)
  out = noiseless.next(noiseless.initialize(), values)
  expected, want = flame_round_numpy(rows)
  admitted, bound = want['admitted'].astype(bool), want['clipping_bound']
  result = np.concatenate([np.asarray(out.result[0]).ravel(), np.asarray(out.result[1])])
  np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-6)
  m = out.measurements
  # Client order at the server is not promised: compare as multisets of norms.
  norms = np.linalg.norm(rows.astype(np.float64), axis=1)
  np.testing.assert_allclose(np.sort(m['update_norms']), np.sort(norms), rtol=1e-6)
  admitted_norms = np.sort(np.asarray(m['update_norms'])[np.asarray(m['admitted']) == 1])
  np.testing.assert_allclose(admitted_norms, np.sort(norms[admitted]), rtol=1e-6)
  assert not admitted[7:].any() and admitted.sum() >= 6  # majority cluster, no attacker
  assert m['num_admitted'] == admitted.sum() and m['num_clients'] == 10 and m['fallback'] == 0
  assert m['clipping_bound'] == pytest.approx(bound, rel=1e-6)
  assert out.state['round_num'] == 1


def test_noise_is_seeded_through_state():
  rows, values = client_values(np.random.default_rng(1), 6, 2)
  process = FlameFactory(noise_lambda=0.1, seed=42).create(VALUE_TYPE)
  state = process.initialize()
  first = process.next(state, values)
  again = process.next(state, values)
  second = process.next(first.state, values)
  flat = lambda out: np.concatenate([np.asarray(out.result[0]).ravel(), np.asarray(out.result[1])])
  np.testing.assert_array_equal(flat(first), flat(again))
  assert not np.allclose(flat(first), flat(second))
  assert first.measurements['noise_stddev'] == pytest.approx(
      0.1 * first.measurements['clipping_bound'])


def test_nan_client_does_not_crash_the_round(noiseless):
  rows, values = client_values(np.random.default_rng(2), 6, 0)
  values[3][1][0] = np.nan
  out = noiseless.next(noiseless.initialize(), values)
  assert out.measurements['num_non_finite'] == 1
  assert out.measurements['num_admitted'] <= 5
  assert np.isfinite(out.result[0]).all() and np.isfinite(out.result[1]).all()


def test_bad_arguments():
  with pytest.raises(ValueError, match='noise_lambda'):
    FlameFactory(noise_lambda=-1.0)
  with pytest.raises(ValueError, match='min_cluster_size'):
    FlameFactory(min_cluster_size=1)
  with pytest.raises(ValueError, match='clustering_space'):
    FlameFactory(clustering_space='weights')
  with pytest.raises(ValueError, match='global model'):
    FlameFactory(clustering_space='model').create(VALUE_TYPE)
  with pytest.raises(TypeError, match='float'):
    FlameFactory().create(tff.TensorType(np.int32, [3]))


def test_too_many_clients_is_an_error_not_a_silent_sample():
  process = FlameFactory(max_clients=3).create(tff.TensorType(np.float32, [2]))
  with pytest.raises(Exception, match='max_clients'):
    process.next(process.initialize(), [np.ones(2, np.float32)] * 4)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
