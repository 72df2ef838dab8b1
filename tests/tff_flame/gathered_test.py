"""The grouped-gather defenses equal NumPy oracles, and huge clients break nothing.

Exactness: `flame_round_blocks`, `krum_round_blocks`,
`foolsgold_round_blocks` and `coordinate_round_blocks` on G row blocks give
the admitted set, S_t, Krum selections, FoolsGold weights, measurements and
aggregates of the NumPy rounds in `tests/oracles.py` at n in
{2, 3, 10, 57, 100}, with NaN/Inf clients and duplicate updates; and through
TFF (rows arrive in the gather's canonical order, mapped back with a
row-aligned payload).

FreqFed and Multi-Metrics (not yet harness defenses: built here directly)
are compared with their NumPy oracles (tests/oracles.py) through TFF.

Overflow: clients with all entries 1e19, 1e25 or 3e38, alone and together
with NaN and Inf clients, through TFF for every defense.
"""

import contextlib
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

import oracles
from experiments import config as config_lib
from experiments import defenses
import tff_flame
from tff_flame import blockwise_ops
from tff_flame import flame
from tff_flame import gathered
from tff_flame import robust
from tff_flame import tff_worker

DIM = 10
VALUE_TYPE = tff.StructWithPythonType(
    [tff.TensorType(np.float32, [2, 3]), tff.TensorType(np.float32, [4])], list)


def as_value(row):
  return [row[:6].reshape(2, 3), row[6:]]


def flat(result):
  return np.concatenate([np.ravel(result[0]), np.ravel(result[1])])


def client_rows(n, seed=0):
  """A benign majority around one direction, attackers opposite, NaN/Inf rows and duplicates."""
  rng = np.random.default_rng(seed)
  direction = rng.normal(size=DIM)
  num_bad = (n - 1) // 3
  rows = np.concatenate([direction + 0.4 * rng.normal(size=(n - num_bad, DIM)),
                         -3 * direction + 0.05 * rng.normal(size=(num_bad, DIM))])
  rows = rows.astype(np.float32)
  if n >= 3:
    rows[1] = rows[0]  # duplicate benign update
  if n >= 10:
    rows[2, 3] = np.nan
    rows[n - 1] = np.inf
    rows[n - 2] = rows[n - 3]  # duplicate attacker update
  if n >= 57:
    rows[5] = -np.inf
    rows[6, 0] = np.nan
  return rows


def split(rows, g, seed):
  rng = np.random.default_rng(seed)
  cuts = np.sort(rng.integers(0, len(rows) + 1, size=g - 1))
  bounds = np.concatenate([[0], cuts, [len(rows)]])
  return [tf.constant(rows[bounds[i]:bounds[i + 1]]) for i in range(g)]


NS = [2, 3, 10, 57, 100]


@pytest.mark.parametrize('n', NS)
@pytest.mark.parametrize('space', ['update', 'model'])
def test_flame_blocks_equal_numpy(n, space):
  rows = client_rows(n, seed=n)
  reference = None if space == 'update' else np.random.default_rng(1).normal(
      size=DIM).astype(np.float32)
  seed = tf.constant([3, 4], tf.int64)
  want_agg, want = oracles.flame_round_numpy(rows, reference=reference, noise_lambda=0.01)
  # The documented noise: sigma * N(0, 1) per coordinate, drawn from the seed.
  noise = want['noise_stddev'] * tf.random.stateless_normal([DIM], seed, dtype=tf.float64).numpy()
  for g in ((1, 4, 9) if n <= 10 else (7,)):
    got_agg, got = flame.flame_round_blocks(split(rows, g, n + g), seed, 0.01,
                                            global_model=reference)
    np.testing.assert_array_equal(got['admitted'], want['admitted'])
    np.testing.assert_array_equal(got['cluster_labels'] >= 0, want['cluster_labels'] >= 0)
    assert got['clipping_bound'].numpy() == pytest.approx(want['clipping_bound'], rel=1e-12)
    np.testing.assert_allclose(got['update_norms'], want['update_norms'], rtol=1e-12)
    for key in ('num_admitted', 'num_non_finite', 'fallback', 'num_clients'):
      assert got[key].numpy() == want[key], key
    # lambda reaches the round as float32 (0.01 is 0.0099999998), hence rel=1e-7.
    assert got['noise_stddev'].numpy() == pytest.approx(want['noise_stddev'], rel=1e-7)
    np.testing.assert_allclose(got_agg, want_agg + noise, rtol=1e-5, atol=1e-6)
  if n >= 10:
    assert want['num_admitted'] >= n // 2 + 1


@pytest.mark.parametrize('n', NS)
@pytest.mark.parametrize('selected', [1, None])
def test_krum_blocks_equal_numpy(n, selected):
  rows = client_rows(n, seed=n)
  f = max(0, (n - 3) // 3)
  want_agg, want = oracles.krum_round_numpy(rows, f, selected)
  for g in (1, 5):
    got_agg, got = robust.krum_round_blocks(split(rows, g, n + g), f, selected)
    np.testing.assert_array_equal(got['admitted'], want['admitted'])
    np.testing.assert_allclose(got['scores'], want['scores'], rtol=1e-9)
    assert got['neighbours'].numpy() == want['neighbours']
    np.testing.assert_allclose(got_agg, want_agg, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('n', NS)
def test_foolsgold_blocks_equal_numpy(n):
  rows = client_rows(n, seed=n)
  want_agg, want = oracles.foolsgold_round_numpy(rows, kappa=1.0)
  got_agg, got = robust.foolsgold_round_blocks(split(rows, 4, n), kappa=1.0)
  np.testing.assert_array_equal(got['admitted'], want['admitted'])
  # The similarities come from a float32 Gram matrix; FoolsGold's logit magnifies their
  # rounding to a few 1e-6 of a weight here (the oracle is float64 throughout).
  np.testing.assert_allclose(got['weights'], want['weights'], rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(got_agg, want_agg, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('n', NS)
def test_coordinate_blocks_equal_numpy(n):
  rows = client_rows(n, seed=n)
  pairs = [(oracles.median_numpy, blockwise_ops.coordinate_median),
           (lambda x: oracles.trimmed_mean_numpy(x, 0.2),
            lambda x: blockwise_ops.trimmed_mean(x, 0.2))]
  for numpy_stat, block_stat in pairs:
    want_agg, want = oracles.coordinate_round_numpy(rows, numpy_stat)
    got_agg, got = robust.coordinate_round_blocks(split(rows, 6, n), block_stat)
    np.testing.assert_array_equal(got['admitted'], want['admitted'])
    np.testing.assert_allclose(got_agg, want_agg, rtol=1e-5, atol=1e-6)


# The newer defenses in both spaces: factory and NumPy oracle.
NEWER = {
    'freqfed': (lambda: tff_flame.FreqFedFactory(max_clients=64),
                lambda rows: oracles.freqfed_round_numpy(rows)),
    'freqfed_model': (lambda: tff_flame.FreqFedFactory(clustering_space='model', max_clients=64),
                      lambda rows: oracles.freqfed_round_numpy(rows, reference=GLOBAL_MODEL)),
    'multi_metrics': (lambda: tff_flame.MultiMetricsFactory(max_clients=64),
                      lambda rows: oracles.multi_metrics_round_numpy(rows)),
    'multi_metrics_model': (
        lambda: tff_flame.MultiMetricsFactory(metric_space='model', max_clients=64),
        lambda rows: oracles.multi_metrics_round_numpy(rows, reference=GLOBAL_MODEL)),
}
GATHERING = ['flame', 'flame_model', 'flame_hardened', 'krum', 'multi_krum', 'median',
             'trimmed_mean', 'foolsgold'] + list(NEWER)
ALL = GATHERING + ['norm_bounding', 'weak_dp']
NUM_CLIENTS = 14
GLOBAL_MODEL = np.linspace(-1.0, 1.0, DIM).astype(np.float32)


def make_aggregator(name):
  if name in NEWER:
    return NEWER[name][0]()
  space = 'model' if name in ('flame_model', 'flame_hardened') else 'update'
  return defenses.defense_factory(config_lib.ExperimentConfig(
      defense='flame' if name == 'flame_model' else name, noise_lambda=0.0,
      clustering_space=space, num_byzantine=5, trim_fraction=0.2, norm_bound=1.0,
      dp_noise_multiplier=0.0, clients_per_round=NUM_CLIENTS))


@pytest.fixture(scope='module')
def processes():
  return {}


def labelled_process(cache, name):
  """next(state, (value, client index), global_model) -> output with `payload` = indices."""
  if name not in cache:
    factory = make_aggregator(name)
    if name in GATHERING:
      process = factory.create_gathered(VALUE_TYPE, payload_type=tff.TensorType(np.int32))
    else:
      process = factory.create(VALUE_TYPE)
    cache[name] = (factory, process)
  return cache[name]


def run_round(cache, name, rows):
  factory, process = labelled_process(cache, name)
  state = process.initialize()
  if name in GATHERING:
    values = [(as_value(r), np.int32(i)) for i, r in enumerate(rows)]
    args = (state, values, as_value(GLOBAL_MODEL)) if factory.requires_global_model else (
        state, values)
  else:
    args = (state, [as_value(r) for r in rows])
  return process.next(*args)


def numpy_round(name, rows):
  if name in NEWER:
    want = NEWER[name][1](rows)
    return want['aggregate'], dict(admitted=want['admitted'].astype(np.int32))
  if name in ('flame', 'flame_model'):
    return oracles.flame_round_numpy(rows,
                                     reference=GLOBAL_MODEL if name == 'flame_model' else None)
  if name == 'flame_hardened':
    return oracles.hardened_round_numpy(rows, reference=GLOBAL_MODEL)
  if name in ('krum', 'multi_krum'):
    return oracles.krum_round_numpy(rows, 5, 1 if name == 'krum' else None)
  if name == 'median':
    return oracles.coordinate_round_numpy(rows, oracles.median_numpy)
  if name == 'foolsgold':
    return oracles.foolsgold_round_numpy(rows, kappa=1.0)
  return oracles.coordinate_round_numpy(rows, lambda v: oracles.trimmed_mean_numpy(v, 0.2))


@pytest.mark.parametrize('name', GATHERING)
def test_through_tff_equals_numpy_with_aligned_payload(processes, name):
  rows = client_rows(NUM_CLIENTS, seed=7)
  out = run_round(processes, name, rows)
  m = out.measurements
  order = np.asarray(m['payload'])  # row i at the server is client order[i]
  assert sorted(order.tolist()) == list(range(NUM_CLIENTS))
  want_agg, want = numpy_round(name, rows)
  # Duplicate updates are indistinguishable (Krum may pick either of two equal
  # rows on a tie): compare the admitted clients as a multiset of row bytes.
  admitted_bytes = lambda rows, mask: sorted(r.tobytes() for r in rows[mask.astype(bool)])
  assert admitted_bytes(rows[order], np.asarray(m['admitted'])) == admitted_bytes(
      rows, want['admitted'])
  np.testing.assert_allclose(flat(out.result), want_agg, rtol=1e-5, atol=1e-6)
  if name.startswith('flame'):
    assert m['clipping_bound'] == pytest.approx(want['clipping_bound'], rel=1e-12)
    candidates = NUM_CLIENTS - want.get('num_alike', 0) - want['num_non_finite']
    assert m['num_admitted'] >= (NUM_CLIENTS if name != 'flame_hardened' else candidates) // 2 + 1
    if name == 'flame_hardened':
      assert admitted_bytes(rows[order], np.asarray(m['alike'])) == admitted_bytes(
          rows, want['alike'])


def huge_cases():
  rng = np.random.default_rng(11)
  direction = rng.normal(size=DIM)
  benign = (direction + 0.3 * rng.normal(size=(9, DIM))).astype(np.float32)
  cases = {}
  for value in (1e19, 1e25, 3e38):
    cases[f'{value:g}'] = (np.concatenate([benign, np.full((1, DIM), value, np.float32)]),
                           [9])
  bad = np.stack([np.full(DIM, 1e19), np.full(DIM, -1e25), np.full(DIM, 3e38),
                  np.full(DIM, np.nan), np.where(np.arange(DIM) == 2, np.inf, 0.0)])
  cases['all'] = (np.concatenate([benign, bad.astype(np.float32)]), [9, 10, 11, 12, 13])
  return cases


HUGE = huge_cases()


@pytest.mark.parametrize('name', ALL)
def test_huge_clients_break_no_round(processes, name):
  for case, (rows, bad) in HUGE.items():
    out = run_round(processes, name, rows)
    result = flat(out.result)
    benign = rows[:9].astype(np.float64)
    assert np.isfinite(result).all(), (name, case)
    if name == 'foolsgold':
      # FoolsGold weighs down look-alikes only: a lone huge client with a finite norm is not
      # alike to anyone and keeps its weight (by design); one float32 cannot hold is left out.
      norms = np.linalg.norm(rows.astype(np.float64), axis=1)
      order = np.asarray(out.measurements['payload'])
      weights = np.asarray(out.measurements['weights'])[np.argsort(order)]
      assert all(weights[c] == 0 for c in bad if not norms[c] <= 3.4e38), case
      continue
    # Nothing from a huge client reaches the result: it stays within the benign range.
    assert np.abs(result).max() <= np.abs(benign).max() + 1e-6, (name, case, result)
    m = out.measurements
    if name in GATHERING:
      admitted = np.asarray(m['admitted'])
      order = np.asarray(m['payload'])
      row_of_client = {int(c): i for i, c in enumerate(order)}
      norms = np.linalg.norm(rows.astype(np.float64), axis=1)
      never = [c for c in bad
               if name not in ('median', 'trimmed_mean') or not norms[c] <= 3.4e38]
      assert not any(admitted[row_of_client[c]] for c in never), (name, case)
      if name.startswith('flame'):
        assert m['clipping_bound'] <= np.linalg.norm(benign, axis=1).max() + 1e-6
        assert m['num_admitted'] >= 1
    else:
      assert m['num_non_finite'] == len(bad), (name, case)


@pytest.mark.parametrize('name', GATHERING)
def test_every_gathering_defense_has_a_weighted_form(name):
  """`as_weighted()` (for `build_weighted_fed_avg`) comes from the base, for every defense."""
  factory = make_aggregator(name)
  assert isinstance(factory, gathered.GatheredAggregationFactory)
  assert isinstance(factory.as_weighted(), tff.aggregators.WeightedAggregationFactory)


def clients_last(process, state_type):
  """`next(state, value, global_model)` as a computation taking (state, global_model, value).

  TFF 0.87's mergeable context splits the clients correctly only when the CLIENTS-placed
  argument is the last one: `_partition_value` carries the client counters of the LAST
  struct element to the next subround, so with (state, value@CLIENTS, global_model@SERVER)
  every service gets the first share of the clients (seen here: each client twice, half
  of them missing). The learning process (`build_flame_fed_avg`) takes (state, data@CLIENTS).
  """
  value_type = process.next.type_signature.parameter[1]
  model_type = process.next.type_signature.parameter[2]

  @tff.federated_computation(state_type, model_type, value_type)
  def next_fn(state, global_model, value):
    return process.next(state, value, global_model)
  return next_fn


def split_round(name, rows, num_local):
  """(result, measurements) of one FLAME round on `num_local` services (1: the session's)."""
  factory = tff_flame.FlameFactory(noise_lambda=0.0, max_clients=len(rows),
                                   clustering_space='model' if name == 'flame_model' else 'update')
  process = factory.create_gathered(VALUE_TYPE, payload_type=tff.TensorType(np.int32))
  values = [(as_value(r), np.int32(i)) for i, r in enumerate(rows)]
  context = (tff_worker.execution_context(num_local=num_local) if num_local > 1
             else contextlib.nullcontext())
  with context:
    state = process.initialize()
    if factory.requires_global_model:
      next_fn = clients_last(process, process.initialize.type_signature.result)
      out = next_fn(state, as_value(GLOBAL_MODEL), values)
    else:
      out = process.next(state, values)
  return flat(out.result), out.measurements


@pytest.mark.parametrize('name', ['flame', 'flame_model'])
def test_round_split_over_two_services_equals_one_and_numpy(name):
  """n = 100 with NaN, Inf and huge clients: the clients split over two services (TFF's
  mergeable context, each folding its share) give one execution's round and the oracle's."""
  rows = client_rows(100, seed=5)
  rows[20] = 3e38
  rows[21] = -1e25
  one, one_m = split_round(name, rows, 1)
  two, two_m = split_round(name, rows, 2)
  np.testing.assert_array_equal(two, one)
  for key in ('admitted', 'payload', 'clipping_bound', 'num_admitted'):
    np.testing.assert_array_equal(np.asarray(two_m[key]), np.asarray(one_m[key]))
  want_agg, want = numpy_round(name, rows)
  order = np.asarray(two_m['payload'])
  np.testing.assert_array_equal(np.asarray(two_m['admitted']), want['admitted'][order])
  assert two_m['clipping_bound'] == pytest.approx(want['clipping_bound'], rel=1e-12)
  np.testing.assert_allclose(two, want_agg, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['flame', 'flame_model', 'krum', 'median'])
def test_defense_rounds_stay_splittable_by_the_mergeable_execution_context(name):
  """The whole `next` (gather, client count, server step) compiles to MergeableCompForm."""
  from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler  # pylint: disable=g-import-not-at-top
  factory = make_aggregator(name)
  process = factory.create_gathered(VALUE_TYPE)
  form = mergeable_comp_compiler.compile_to_mergeable_comp_form(process.next)
  assert type(form).__name__ == 'MergeableCompForm'


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
