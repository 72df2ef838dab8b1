"""Attacks that know the defense: the attackers craft their updates in the harness.

A `CraftedAttack` sees, each attack round, what its colluding attackers know
(`AttackerView`): the global model G they all receive, their own data, the
model architecture and the training protocol (learning rate, epochs, batch
size, clients per round), and what it remembers of earlier rounds (its own
state: earlier global models it chose to keep, its trigger). It never reads a
benign client's data or update. From that it returns one update per attacker
(TFF's sign, G - W), which that client sends in place of its training
(`client_work.crafted_client_data`). Local training runs here as a client
would run it (`LocalTrainer`), in the harness's own TF (eager), not in TFF.

The attack's state (`state`/`restore`, JSON) is saved after every round, so a
resumed run continues with what the attackers knew.
"""

import dataclasses
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from experiments import client_work
from experiments.attacks import base


@dataclasses.dataclass
class AttackerView:
  """What the round's attackers know when they craft their updates.

  Attributes:
    round_num: the round (1-based).
    global_weights: G's trainable weights, as every client receives them.
    data: client id -> (x, y), the round's attackers' own data (they collude).
    attacker_index: client id -> its index among the population's attackers.
    model_fn: the model architecture (a fresh Keras model returning logits).
    poison_fn: the task's poisoning, `poison_fn(x, y, rate, rng, ...)`.
    trigger: the task's input trigger (`tasks.task.InputTrigger`), or None.
    config: the experiment's config: the training protocol every client
      follows, and the attack's own flags.
    rng: the round's random generator, from (seed, round).
  """
  round_num: int
  global_weights: list
  data: dict
  attacker_index: dict
  model_fn: Callable[[], tf.keras.Model]
  poison_fn: Callable
  trigger: Optional[object]
  config: object
  rng: np.random.Generator

  def poisoned(self, client_id: int, rate: Optional[float] = None, **kwargs) -> tuple:
    """The attacker's own data with `rate` (default `--data_poisoning_rate`) of it poisoned."""
    x, y = self.data[client_id]
    rate = self.config.data_poisoning_rate if rate is None else rate
    return self.poison_fn(x, y, rate, self.rng, **kwargs)


class CraftedAttack(base.Attack):
  """Base of the attacks whose updates are crafted in the harness (see the module doc)."""
  sends_crafted_updates = True

  def craft(self, view: AttackerView) -> dict:
    """client id -> its update (list of arrays like G, sign G - W) for the round's attackers."""
    raise NotImplementedError

  def state(self) -> dict:
    """What the attackers remember across rounds, as JSON (saved after every round)."""
    return {}

  def restore(self, state: dict) -> None:
    """Takes back what `state` returned (on resuming a run)."""
    del state


def flat(weights) -> np.ndarray:
  """One float64 vector of a list of arrays."""
  return np.concatenate([np.ravel(np.asarray(w, np.float64)) for w in weights])


def unflat(vector: np.ndarray, like: list) -> list:
  """Splits a vector into float32 arrays shaped like `like`."""
  out, start = [], 0
  for w in like:
    size = int(np.prod(np.shape(w)))
    out.append(np.asarray(vector[start:start + size], np.float32).reshape(np.shape(w)))
    start += size
  return out


def norm(weights) -> float:
  return float(np.linalg.norm(flat(weights)))


def difference(a: list, b: list) -> list:
  """a - b, array by array (an update is G - W)."""
  return [np.asarray(x, np.float32) - np.asarray(y, np.float32) for x, y in zip(a, b)]


class LocalTrainer:
  """A client's local SGD (its learning rate, epochs and batch size), run in the harness.

  `train` starts from given weights and returns the trained weights W; the
  update a client sends is G - W. The loss, a per-step gradient mask
  (Neurotoxin) and a projection after each step (PGD) can be changed. The
  compiled gradient step is cached per loss.
  """

  def __init__(self, model_fn: Callable[[], tf.keras.Model], learning_rate: float, epochs: int,
               batch_size: int):
    self.model = model_fn()
    self.learning_rate = learning_rate
    self.epochs = epochs
    self.batch_size = batch_size
    self._steps = {}

  def _gradient_fn(self, loss):
    """Compiled (x, y, flags, anchor) -> (gradients, loss) for `loss`, cached."""
    if loss not in self._steps:
      model = self.model

      @tf.function(reduce_retracing=True)
      def gradients(x, y, flags, anchor):
        with tf.GradientTape() as tape:
          value = loss(model(x, training=True), y, flags, model.trainable_variables, anchor)
        grads = tape.gradient(value, model.trainable_variables)
        return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                for v, g in zip(model.trainable_variables, grads)], value

      self._steps[loss] = gradients
    return self._steps[loss]

  def _assign(self, weights) -> None:
    for v, w in zip(self.model.trainable_variables, weights):
      v.assign(np.asarray(w, v.dtype.as_numpy_dtype))

  def _weights(self) -> list:
    return [v.numpy() for v in self.model.trainable_variables]

  def batches(self, n: int, rng: np.random.Generator):
    """Index batches of `epochs` shuffled passes over n examples."""
    for _ in range(self.epochs):
      order = rng.permutation(n)
      for start in range(0, n, self.batch_size):
        yield order[start:start + self.batch_size]

  def train(self, start: list, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *,
            loss=None, flags: Optional[np.ndarray] = None, gradient_mask: Optional[list] = None,
            after_step: Optional[Callable[[list], Optional[list]]] = None) -> list:
    """W after local SGD from `start` on (x, y).

    Args:
      loss: loss(logits, y, flags, trainable, anchor) -> scalar; default the
        clients' task loss. `anchor` is `start` (G).
      flags: float per example, handed to `loss` (e.g. 1 for poisoned rows).
      gradient_mask: arrays like the weights, multiplied into every gradient.
      after_step: trainable variables -> new values (or None) after each step.
    """
    gradients = self._gradient_fn(loss or task_loss_with_flags)
    flags = np.zeros(len(x), np.float32) if flags is None else np.asarray(flags, np.float32)
    anchor = [tf.constant(w, tf.float32) for w in start]
    mask = None if gradient_mask is None else [tf.constant(m, tf.float32) for m in gradient_mask]
    self._assign(start)
    for index in self.batches(len(x), rng):
      grads, _ = gradients(tf.constant(x[index]), tf.constant(y[index]),
                           tf.constant(flags[index]), anchor)
      for i, (v, g) in enumerate(zip(self.model.trainable_variables, grads)):
        v.assign_sub(self.learning_rate * (g if mask is None else g * mask[i]))
      if after_step is not None:
        moved = after_step(self.model.trainable_variables)
        if moved is not None:
          for v, m in zip(self.model.trainable_variables, moved):
            v.assign(m)
    return self._weights()

  def mean_gradient(self, weights: list, x: np.ndarray, y: np.ndarray, loss=None) -> list:
    """The task loss's gradient at `weights`, averaged over batches of the data (one pass)."""
    gradients = self._gradient_fn(loss or task_loss_with_flags)
    self._assign(weights)
    anchor = [tf.constant(w, tf.float32) for w in weights]
    total, count = None, 0
    for start in range(0, len(x), self.batch_size):
      index = slice(start, start + self.batch_size)
      grads, _ = gradients(tf.constant(x[index]), tf.constant(y[index]),
                           tf.zeros(len(x[index]), tf.float32), anchor)
      grads = [g.numpy() for g in grads]
      total = grads if total is None else [t + g for t, g in zip(total, grads)]
      count += 1
    return [t / max(count, 1) for t in total]

  def update(self, start: list, x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
             **kwargs) -> list:
    """The update G - W a client sends after `train` from G = `start`."""
    return difference(start, self.train(start, x, y, rng, **kwargs))

  def accuracy(self, weights: list, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the model with `weights` on (x, y) (e.g. an attacker's own backdoor check)."""
    self._assign(weights)
    logits = self.model(x, training=False)
    return float(np.mean(np.argmax(logits, axis=-1) == y)) if len(x) else float('nan')


def task_loss_with_flags(logits, y, flags, trainable, anchor):
  """The clients' task loss (flags and anchor unused)."""
  del flags, trainable, anchor
  return client_work.task_loss(y, logits)


def trainer_for(view: AttackerView) -> LocalTrainer:
  """A `LocalTrainer` following the clients' protocol in the view's config."""
  return LocalTrainer(view.model_fn, view.config.client_learning_rate, view.config.client_epochs,
                      view.config.batch_size)


def ball_projection(center: list, radius: float) -> Callable[[list], list]:
  """after_step for PGD: back onto the L2 ball of `radius` around `center`."""
  center = [tf.constant(c, tf.float32) for c in center]
  return lambda variables: base.project_to_ball(variables, center, radius)
