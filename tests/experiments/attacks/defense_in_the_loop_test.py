"""defense_in_the_loop: the strongest mix the defense, run by the attackers, still admits."""

import pathlib
import sys

import numpy as np
import pytest

import attack_views
from experiments import config as config_lib
from experiments import defenses
from experiments.attacks import crafted
from experiments.attacks import defense_in_the_loop as ditl


def test_bisection_finds_the_largest_admitted_weight():
  assert ditl.strongest_admitted(lambda lam: lam <= 0.37, 2.0, steps=20) == pytest.approx(
      0.37, abs=1e-5)
  assert ditl.strongest_admitted(lambda lam: True, 2.0) == 2.0
  assert ditl.strongest_admitted(lambda lam: False, 2.0) == 0.0


def test_layers_and_mix_by_hand():
  weights = [np.zeros((2, 3)), np.zeros(3), np.zeros((3, 1)), np.zeros(1)]
  assert ditl.layer_slices(weights) == [(0, 9), (9, 13)]
  critical = np.array([True, False, True])
  np.testing.assert_allclose(ditl.mix(np.ones(3), 3 * np.ones(3), 0.25, critical),
                             [0.25 * 3 + 0.75, 1.0, 0.25 * 3 + 0.75])
  np.testing.assert_allclose(ditl.mix(np.ones(3), 3 * np.ones(3), 1.5, critical), [4.5, 1, 4.5])


@pytest.fixture(scope='module')
def flame_round():
  task = attack_views.digits_task(num_clients=8)
  config = config_lib.ExperimentConfig(attack='defense_in_the_loop', defense='flame',
                                       data_poisoning_rate=1.0, noise_lambda=0.0,
                                       ditl_max_lambda=2.0)
  attackers = (0, 1, 2, 3)
  view = attack_views.view(task, config, weights=attack_views.trained_weights(task),
                           attackers=attackers)
  attack = defenses_in_the_loop = ditl.DefenseInTheLoop(
      ditl.local_server_step(defenses.defense_factory(config)), config.ditl_max_lambda)
  del defenses_in_the_loop
  return task, config, view, attack, attack.craft(view)


def test_crafted_updates_are_the_strongest_the_local_defense_admits(flame_round):
  task, config, view, attack, updates = flame_round
  # Replay the attackers' local round (the same draws) to test the choice from outside.
  replay = ditl.DefenseInTheLoop(attack.server_step, attack.lam_max)
  replay_view = attack_views.view(task, config, weights=view.global_weights,
                                  attackers=tuple(view.data))
  replay.craft(replay_view)
  assert replay.lam == attack.lam and replay.critical_layers == attack.critical_layers
  assert 0.0 < attack.lam <= attack.lam_max
  assert attack.critical_layers and len(attack.critical_layers) < len(
      ditl.layer_slices(view.global_weights))
  # Outside the critical layers every crafted update is a benign update: the layers it left
  # alone hold no backdoor, and differ between attackers as benign updates do.
  layers = ditl.layer_slices(view.global_weights)
  untouched = [layers[i] for i in range(len(layers)) if i not in attack.critical_layers]
  flat = {c: crafted.flat(u) for c, u in updates.items()}
  for start, stop in untouched:
    assert all(np.abs(flat[c][start:stop]).sum() > 0 for c in flat)


def test_a_plain_data_poisoning_update_is_refused_where_the_crafted_one_passes(flame_round):
  task, config, view, attack, updates = flame_round
  others = attack_views.view(task, config, weights=view.global_weights, attackers=(4, 5, 6, 7))
  benign = [crafted.flat(attack_views.clean_update(others, c, seed=s))
            for s in (2, 3) for c in (4, 5, 6, 7)]
  global_flat = crafted.flat(view.global_weights)
  crafted_rows = [crafted.flat(u) for u in updates.values()]
  poisoning_rows = [crafted.flat(attack_views.data_poisoning_update(view, c)) for c in updates]
  admitted = ditl.admitted_by(attack.server_step, np.array(benign + crafted_rows), global_flat)
  refused = ditl.admitted_by(attack.server_step, np.array(benign + poisoning_rows), global_flat)
  assert admitted[len(benign):].mean() > refused[len(benign):].mean()
  assert not refused[len(benign):].all()


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[2]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
