"""a3fl: the trigger is optimised toward the target, under the mask, within range."""

import pathlib
import sys

import numpy as np
import pytest

import attack_views
from experiments import config as config_lib
from experiments.attacks import a3fl
from experiments.attacks import crafted


def improves_trigger(task, weights, x, before, after) -> bool:
  """The defining property: G's target loss on stamped inputs fell with the new trigger."""
  return (a3fl.target_loss(task.model_fn, weights, x, task.trigger, after) <
          a3fl.target_loss(task.model_fn, weights, x, task.trigger, before) - 0.05)


@pytest.fixture(scope='module')
def crafted_round():
  task = attack_views.digits_task()
  config = config_lib.ExperimentConfig(attack='a3fl', a3fl_trigger_epochs=4,
                                       a3fl_adversarial_epochs=1, a3fl_trigger_step=0.05)
  view = attack_views.view(task, config, weights=attack_views.trained_weights(task))
  attack = a3fl.A3FL(4, 1, 0.01, 0.05)
  return task, view, attack, attack.craft(view)


def test_the_trigger_moves_toward_the_target_under_the_mask(crafted_round):
  task, view, attack, updates = crafted_round
  values, start = attack.trigger_values(), task.trigger.values
  np.testing.assert_array_equal(values[~task.trigger.mask], start[~task.trigger.mask])
  assert values.min() >= 0.0 and values.max() <= 1.0
  assert np.abs(values - start)[task.trigger.mask].max() > 0
  x = np.concatenate([view.data[c][0] for c in attack_views.ATTACKERS])
  assert improves_trigger(task, view.global_weights, x, start, values)
  # A plain data-poisoning client keeps the task's trigger: no improvement.
  assert not improves_trigger(task, view.global_weights, x, start, start)
  assert sorted(updates) == list(attack_views.ATTACKERS)
  assert all(crafted.norm(u) > 0 for u in updates.values())


def test_its_training_uses_the_new_trigger_and_the_state_round_trips(crafted_round):
  task, view, attack, updates = crafted_round
  replay = a3fl.A3FL(4, 1, 0.01, 0.05)
  replay.restore(attack.state())
  np.testing.assert_array_equal(replay.trigger_values(), attack.trigger_values())
  bd_x, _ = task.backdoor_test_data_for(attack.trigger_values())
  assert np.all(bd_x[:, task.trigger.mask] == attack.trigger_values()[task.trigger.mask])
  fresh = a3fl.A3FL(4, 1, 0.01, 0.05)
  assert fresh.trigger_values() is None and fresh.state() == {}


def test_a_task_without_an_input_trigger_is_refused():
  task = attack_views.digits_task()
  view = attack_views.view(task, config_lib.ExperimentConfig(attack='a3fl'))
  view.trigger = None
  with pytest.raises(ValueError, match='--attack=a3fl needs a task'):
    a3fl.A3FL(1, 1, 0.01, 0.01).craft(view)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[2]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
