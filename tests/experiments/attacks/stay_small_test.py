"""stay_small: its updates stay within a fraction of its own clean-update norm."""

import pathlib
import sys

import numpy as np
import pytest

import attack_views
from experiments import config as config_lib
from experiments.attacks import crafted
from experiments.attacks import stay_small


def stays_small(update, clean_norm, fraction) -> bool:
  """The defining property: ||update|| <= fraction x the attacker's clean-update norm."""
  return crafted.norm(update) <= fraction * clean_norm * (1 + 1e-5)


@pytest.mark.parametrize('fraction', [0.3, 0.7])
def test_updates_stay_within_the_fraction_of_the_clean_norm(fraction):
  task = attack_views.digits_task()
  config = config_lib.ExperimentConfig(attack='stay_small', radius_fraction=fraction,
                                       client_epochs=2)
  view = attack_views.view(task, config)
  attack = stay_small.StaySmall(fraction)
  updates = attack.craft(view)
  assert sorted(updates) == sorted(attack.bounds) == list(attack_views.ATTACKERS)
  for client_id in attack_views.ATTACKERS:
    bound = attack.bounds[client_id]
    assert stays_small(updates[client_id], bound, fraction)
    assert crafted.norm(updates[client_id]) > 0.5 * fraction * bound  # it uses its budget
    if fraction <= 0.3:  # the property separates it from a plain data-poisoning client
      assert not stays_small(attack_views.data_poisoning_update(view, client_id), bound,
                             fraction)


def test_the_estimate_is_a_benign_norm():
  task = attack_views.digits_task()
  config = config_lib.ExperimentConfig(attack='stay_small', client_epochs=2)
  view = attack_views.view(task, config)
  attack = stay_small.StaySmall(0.7)
  attack.craft(view)
  clean = [crafted.norm(attack_views.clean_update(view, c)) for c in attack_views.ATTACKERS]
  # Other shuffles of the same clean training.
  np.testing.assert_allclose([attack.bounds[c] for c in attack_views.ATTACKERS], clean,
                             rtol=0.2)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[2]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
