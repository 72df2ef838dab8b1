"""Defenses by name, and exact TPR/TNR from ground-truth flags carried with the updates."""

import numpy as np
import pathlib
import pytest
import sys
import tensorflow as tf
import tensorflow_federated as tff

from experiments import config as config_lib
from experiments import defenses
import tff_flame
from tff_flame import FlameFactory


VALUE_TYPE = tff.TensorType(np.float32, [6])


def test_filter_rates_on_a_hand_made_case():
  rates = defenses.filter_rates(tf.constant([1, 1, 0, 0, 0]), tf.constant([0, 1, 1, 1, 0]))
  assert rates['num_malicious'].numpy() == 2
  assert rates['tpr'].numpy() == pytest.approx(0.5)
  assert rates['tnr'].numpy() == pytest.approx(2 / 3)
  none = defenses.filter_rates(tf.constant([0, 0]), tf.constant([1, 1]))
  assert np.isnan(none['tpr'].numpy()) and none['tnr'].numpy() == 1.0


@pytest.fixture(scope='module')
def labelled_flame():
  return defenses.create_with_ground_truth(FlameFactory(noise_lambda=0.0), VALUE_TYPE)


@pytest.mark.parametrize('attackers_first', [True, False])
def test_tpr_tnr_follow_the_flags_not_the_client_order(labelled_flame, attackers_first):
  rng = np.random.default_rng(1)
  direction = rng.normal(size=6)
  benign = [(direction + 0.3 * rng.normal(size=6)).astype(np.float32) for _ in range(7)]
  bad = [(-5 * direction + 0.01 * rng.normal(size=6)).astype(np.float32) for _ in range(3)]
  values = [(v, np.int32(1)) for v in bad] + [(v, np.int32(0)) for v in benign]
  if not attackers_first:
    values = values[::-1]
  process = labelled_flame
  m = process.next(process.initialize(), values, np.zeros(6, np.float32)).measurements
  assert 'payload' not in m
  assert m['num_malicious'] == 3
  assert m['tpr'] == 1.0  # every attacker rejected
  # Benign admitted / benign, recomputed from which norms were admitted.
  norms = np.asarray(m['update_norms'])
  admitted = np.asarray(m['admitted']) == 1
  benign_norms = np.linalg.norm(np.array(benign, np.float64), axis=1)
  admitted_benign = sum(np.isclose(norms[admitted], n).any() for n in benign_norms)
  assert m['tnr'] == pytest.approx(admitted_benign / 7)
  assert m['num_admitted'] == admitted_benign


def test_labelled_plain_mean_drops_the_flag():
  process = defenses.create_with_ground_truth(tff.aggregators.UnweightedMeanFactory(), VALUE_TYPE)
  values = [(np.full(6, 1.0, np.float32), np.int32(0)), (np.full(6, 3.0, np.float32), np.int32(1))]
  out = process.next(process.initialize(), values, np.zeros(6, np.float32))
  np.testing.assert_allclose(out.result, np.full(6, 2.0))


def _factory(**fields):
  return defenses.defense_factory(config_lib.ExperimentConfig(**fields))


def test_norm_bounding_and_weak_dp_reuse_tff():
  rows = np.array([[3.0, 4.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0.5]], np.float32)
  process = _factory(defense='norm_bounding', norm_bound=1.0).create(
      tff.TensorType(np.float32, [7]))
  out = process.next(process.initialize(), [list(r) for r in rows])
  np.testing.assert_allclose(np.asarray(out.result), ([0.6, 0.8, 0, 0, 0, 0, 0] + rows[1]) / 2,
                             rtol=1e-5)
  dp = _factory(defense='weak_dp', norm_bound=1.0, dp_noise_multiplier=0.0,
                clients_per_round=2).create(tff.TensorType(np.float32, [7]))
  out = dp.next(dp.initialize(), [list(r) for r in rows])
  np.testing.assert_allclose(np.asarray(out.result), ([0.6, 0.8, 0, 0, 0, 0, 0] + rows[1]) / 2,
                             rtol=1e-5)


def test_krum_tpr_tnr_from_flags():
  rng = np.random.default_rng(4)
  rows = np.concatenate([rng.normal(size=(6, 7)), 30 + rng.normal(size=(2, 7))]).astype(np.float32)
  flags = [0] * 6 + [1] * 2
  process = defenses.create_with_ground_truth(
      _factory(defense='multi_krum', num_byzantine=2),
      tff.TensorType(np.float32, [7]))
  m = process.next(process.initialize(), [(r, np.int32(f)) for r, f in zip(rows, flags)],
                   np.zeros(7, np.float32)).measurements
  assert m['tpr'] == 1.0 and m['tnr'] == 1.0 and m['num_malicious'] == 2


def test_registry_rejects_bad_names_and_parameters():
  with pytest.raises(ValueError, match='--defense must be one of'):
    _factory(defense='bulyan')
  with pytest.raises(ValueError, match='trim_fraction'):
    _factory(defense='trimmed_mean', trim_fraction=0.5)
  with pytest.raises(ValueError, match='num_byzantine'):
    _factory(defense='krum', num_byzantine=-1)


def test_every_registered_defense_builds_from_the_default_config():
  """One place to add a defense: each entry builds from the config alone, and the
  filtering ones report the per-client `admitted` that TPR/TNR need."""
  assert defenses.DEFENSES == config_lib.DEFENSES and 'flame' in defenses.FILTERING
  for name in defenses.DEFENSES:
    factory = _factory(defense=name)
    assert isinstance(factory, tff.aggregators.UnweightedAggregationFactory), name
    gathering = isinstance(factory, tff_flame.GatheredAggregationFactory)
    assert gathering or name not in defenses.FILTERING, name
    if gathering:
      assert factory.max_clients == config_lib.ExperimentConfig().clients_per_round, name


def test_foolsgold_tpr_tnr_from_flags():
  rng = np.random.default_rng(2)
  benign = rng.normal(size=(7, 7))
  sybils = 3 * rng.normal(size=7) + 0.05 * rng.normal(size=(3, 7))
  rows = np.concatenate([benign, sybils]).astype(np.float32)
  flags = [0] * 7 + [1] * 3
  factory = _factory(defense='foolsgold', foolsgold_kappa=1.0)
  assert isinstance(factory, tff_flame.FoolsGoldFactory) and 'foolsgold' in defenses.FILTERING
  process = defenses.create_with_ground_truth(factory, tff.TensorType(np.float32, [7]))
  m = process.next(process.initialize(), [(r, np.int32(f)) for r, f in zip(rows, flags)],
                   np.zeros(7, np.float32)).measurements
  assert m['num_malicious'] == 3 and m['tpr'] == 1.0
  assert m['tnr'] == pytest.approx((np.asarray(m['weights']) > 0).sum() / 7)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
