"""What the crafted-attack tests share: the offline digits task (a 38 k-parameter CNN) and
the view its attackers get, plus a plain data-poisoning client to contrast with."""

import numpy as np
import tensorflow as tf

from experiments import config as config_lib
from experiments.attacks import crafted
from tasks import digits

ATTACKERS = (0, 1, 2)


def digits_task(num_clients: int = 6):
  return digits.load_digits_task(num_clients=num_clients, dirichlet_alpha=0.5, seed=0)


def initial_weights(task, seed: int = 0) -> list:
  tf.keras.utils.set_random_seed(seed)
  return [w.numpy() for w in task.model_fn().trainable_variables]


def trained_weights(task, epochs: int = 3) -> list:
  """G after a few epochs of clean training on every client's data (what attacks face)."""
  x = np.concatenate([x for x, _ in task.client_data])
  y = np.concatenate([y for _, y in task.client_data])
  trainer = crafted.LocalTrainer(task.model_fn, 0.1, epochs, 20)
  return trainer.train(initial_weights(task), x, y, np.random.default_rng(0))


def view(task, config: config_lib.ExperimentConfig, weights=None, attackers=ATTACKERS,
         round_num: int = 1, seed: int = 0) -> crafted.AttackerView:
  weights = initial_weights(task) if weights is None else weights
  return crafted.AttackerView(
      round_num=round_num, global_weights=weights,
      data={c: task.client_data[c] for c in attackers},
      attacker_index={c: i for i, c in enumerate(attackers)}, model_fn=task.model_fn,
      poison_fn=task.poison_fn, trigger=task.trigger, config=config,
      rng=np.random.default_rng(seed))


def data_poisoning_update(view: crafted.AttackerView, client_id: int, seed: int = 1) -> list:
  """What a plain data-poisoning client sends: it trains on its poisoned data, nothing more."""
  trainer = crafted.trainer_for(view)
  rng = np.random.default_rng(seed)
  x, y = view.data[client_id]
  xp, yp = view.poison_fn(x, y, view.config.data_poisoning_rate, rng)
  return trainer.update(view.global_weights, xp, yp, rng)


def clean_update(view: crafted.AttackerView, client_id: int, seed: int = 2) -> list:
  """What the same client would send training benignly."""
  x, y = view.data[client_id]
  return crafted.trainer_for(view).update(view.global_weights, x, y, np.random.default_rng(seed))
