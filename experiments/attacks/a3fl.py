"""`a3fl` (Zhang et al., NeurIPS 2023): a trigger optimised to survive the global model's training.

Before each attack round the colluding attackers optimise the trigger's
values (under the task's trigger mask, within its value range) with signed
gradient steps on their pooled data, minimising

  CE(G(x + t), target) + `--a3fl_adversarial_weight` x CE(A(x + t), target),

where A is a copy of G trained `--a3fl_adversarial_epochs` epochs on
triggered inputs with their TRUE labels: a simulated defender that unlearns
the trigger (rebuilt every `REFRESH_EPOCHS` trigger epochs). Each attacker
then trains normally on its data with `--data_poisoning_rate` of it stamped
with that trigger and relabelled; no scaling, no projection. BA is measured
with the attackers' current trigger.

Deviation: the public code weights the adversarial term by a similarity
between A's and G's gradients; here the weight is the flag alone.

The attackers read G, their own data and the task's trigger mask; they pool
their data (collusion).
"""

from typing import Optional

import numpy as np
import tensorflow as tf

from experiments.attacks import crafted
from experiments.attacks import registry

REFRESH_EPOCHS = 5  # trigger epochs between rebuilding the unlearning copy A
TRIGGER_BATCH = 64  # examples per trigger step (the public code's batch size)


class A3FL(crafted.CraftedAttack):
  """Trigger optimised against G and an unlearning copy of G; normal poisoned training."""
  poisons_data = True

  def __init__(self, trigger_epochs: int, adversarial_epochs: int, adversarial_weight: float,
               trigger_step: float):
    self.trigger_epochs = trigger_epochs
    self.adversarial_epochs = adversarial_epochs
    self.adversarial_weight = adversarial_weight
    self.trigger_step = trigger_step
    self.values: Optional[np.ndarray] = None  # the current trigger; None: the task's
    self._trainer = None
    self._models = None
    self._step = None

  def trigger_values(self):
    return self.values

  def state(self):
    return {} if self.values is None else {'values': self.values.tolist()}

  def restore(self, state):
    self.values = None if 'values' not in state else np.asarray(state['values'], np.float32)

  def _setup(self, view: crafted.AttackerView) -> None:
    if view.trigger is None:
      raise ValueError('--attack=a3fl needs a task whose trigger is input entries (digits, '
                       'emnist, fashion_mnist, nbaiot).')
    if self._trainer is None:
      self._trainer = crafted.trainer_for(view)
      self._models = (view.model_fn(), view.model_fn())
      self._step = _trigger_gradient_fn(*self._models)

  def unlearning_copy(self, view: crafted.AttackerView, x: np.ndarray, y: np.ndarray,
                      values: np.ndarray) -> list:
    """A: G trained on the pooled inputs stamped with the trigger, under their true labels."""
    trainer = crafted.LocalTrainer(view.model_fn, view.config.client_learning_rate,
                                   self.adversarial_epochs, view.config.batch_size)
    return trainer.train(view.global_weights, view.trigger.apply(x, values), y, view.rng)

  def optimise_trigger(self, view: crafted.AttackerView, values: np.ndarray) -> np.ndarray:
    """The trigger after `trigger_epochs` signed-gradient epochs (see the module doc)."""
    self._setup(view)
    x = np.concatenate([view.data[c][0] for c in view.data])
    y = np.concatenate([view.data[c][1] for c in view.data])
    trigger = view.trigger
    global_model, adversary = self._models
    _assign(global_model, view.global_weights)
    mask = tf.constant(trigger.mask)
    low, high = trigger.value_range
    t = tf.Variable(np.asarray(values, np.float32))
    target = np.full(TRIGGER_BATCH, trigger.target_label, np.int32)
    for epoch in range(self.trigger_epochs):
      if epoch % REFRESH_EPOCHS == 0:
        _assign(adversary, self.unlearning_copy(view, x, y, t.numpy()))
      order = view.rng.permutation(len(x))
      for start in range(0, len(x), TRIGGER_BATCH):
        index = order[start:start + TRIGGER_BATCH]
        grad = self._step(tf.constant(x[index]), t, mask, tf.constant(target[:len(index)]),
                          tf.constant(self.adversarial_weight, tf.float32))
        t.assign(tf.where(mask, tf.clip_by_value(t - self.trigger_step * tf.sign(grad), low, high),
                          t))
    return t.numpy()

  def craft(self, view):
    self._setup(view)
    start = view.trigger.values if self.values is None else self.values
    self.values = self.optimise_trigger(view, start)
    return {c: self._trainer.update(view.global_weights,
                                    *view.poisoned(c, trigger_values=self.values), view.rng)
            for c in view.data}


def _assign(model: tf.keras.Model, weights: list) -> None:
  for v, w in zip(model.trainable_variables, weights):
    v.assign(w)


def _trigger_gradient_fn(global_model: tf.keras.Model, adversary: tf.keras.Model):
  """Compiled d/dt of CE(G(x + t), target) + weight x CE(A(x + t), target)."""

  @tf.function(reduce_retracing=True)
  def gradient(x, t, mask, target, weight):
    with tf.GradientTape() as tape:
      stamped = tf.where(mask, t, x)
      loss = (_cross_entropy(target, global_model(stamped, training=False)) +
              weight * _cross_entropy(target, adversary(stamped, training=False)))
    return tape.gradient(loss, t)

  return gradient


def _cross_entropy(y, logits):
  return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, logits,
                                                                        from_logits=True))


def target_loss(model_fn, weights: list, x: np.ndarray, trigger, values: np.ndarray) -> float:
  """CE of the model with `weights` on `x` stamped with `values`, against the target."""
  model = model_fn()
  _assign(model, weights)
  logits = model(trigger.apply(x, values), training=False)
  return float(_cross_entropy(np.full(len(x), trigger.target_label, np.int32), logits))


@registry.register('a3fl', 'Zhang et al. 2023: before each attack round the trigger is '
                   'optimised against G and a copy of G trained to unlearn it; normal poisoned '
                   'training, no scaling; BA with the current trigger',
                   'G, its own data (pooled by the attackers), the trigger mask')
def _a3fl(config):
  return A3FL(config.a3fl_trigger_epochs, config.a3fl_adversarial_epochs,
              config.a3fl_adversarial_weight, config.a3fl_trigger_step)
