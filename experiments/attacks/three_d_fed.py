"""`3dfed` (Li et al., S&P 2023): covert colluding backdoors that read the server's verdict.

Per attack round, each of the round's colluding attackers:

1. **Trains the backdoor under a constraint**: loss = 0.3 CE(clean rows) +
   0.3 CE(poisoned rows) + 0.4 ||W - G|| on its own data with
   `--data_poisoning_rate` of it poisoned.
2. **Tunes its norm to a benign reference**: its own clean update's norm b;
   the update is scaled to `norm_target` x b (at most 5x, as the public code).
3. **Decorrelates the group with noise masks**: on the output layer's rows of
   a few random non-target classes, each attacker adds Gaussian noise of
   norm about `noise_scale` x the group's mean update norm, centred over the
   group so that the masks sum to zero: the attackers look less alike, their
   mean is unchanged.
4. **Plants an indicator**: one coordinate of a hidden layer where its own
   benign and backdoor updates are smallest is set to v = 5% of b. The next
   global model tells whether the server used it: the global update there,
   over v, is about clip / (admitted count) when accepted, less when clipped,
   and at noise level when rejected (the noise level is read from the global
   update on other quiet coordinates).
5. **Adapts**: when an attacker was rejected, the group stays closer to G
   (`norm_target` x 0.8, at least 0.3) and decorrelates more (`noise_scale`
   x 1.5, at most 1); when clipped, `norm_target` x 0.9; when all were
   accepted unclipped, `norm_target` x 1.1 (at most 1).

Choices against the public code (haoyangliASTAPLE/3DFed): no decoy models
(they need submissions beyond one per attacker, which this threat model does
not give); the noise masks are random and centred, not optimised; the
adaptation rule above replaces its random re-draw of the mask trade-off.

The attackers read G, the previous global model's values on their indicator
and quiet coordinates (kept in their state), their own data, and each
other's updates (they centre the masks together).
"""

import numpy as np
import tensorflow as tf

from experiments.attacks import crafted
from experiments.attacks import registry

LOSS_WEIGHTS = (0.3, 0.3, 0.4)  # clean CE, backdoor CE, ||W - G|| (the public code's)
MAX_SCALE = 5.0
NOISE_CLASSES = 3  # non-target output rows that carry the masks
INDICATOR_FRACTION = 0.05  # the indicator's value, as a share of the benign norm
QUIET_COORDINATES = 64  # coordinates read for the noise level
START = dict(norm_target=1.0, noise_scale=0.3)


def constrained_loss(logits, y, flags, trainable, anchor):
  """0.3 CE(clean rows) + 0.3 CE(poisoned rows, flags = 1) + 0.4 ||W - G||."""
  losses = tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
  poisoned = tf.cast(flags, losses.dtype)
  clean = 1.0 - poisoned
  mean = lambda w: tf.reduce_sum(losses * w) / tf.maximum(tf.reduce_sum(w), 1.0)
  distance = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(v - a))
                               for v, a in zip(trainable, anchor)]) + 1e-12)
  return (LOSS_WEIGHTS[0] * mean(clean) + LOSS_WEIGHTS[1] * mean(poisoned) +
          LOSS_WEIGHTS[2] * distance)


def output_rows(weights: list, classes) -> np.ndarray:
  """Flat indices of the output layer's kernel columns and bias entries of `classes`."""
  sizes = [int(np.prod(np.shape(w))) for w in weights]
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  kernel = np.shape(weights[-2])
  kernel_index = np.arange(sizes[-2]).reshape(kernel)[:, list(classes)].ravel() + offsets[-3]
  return np.concatenate([kernel_index, np.asarray(list(classes)) + offsets[-2]])


def centred_noise(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
  """[count, size] Gaussian rows that sum to zero over the rows, each of unit norm before
  centring (rows of a group of one are zero)."""
  noise = rng.normal(size=(count, size))
  noise /= np.linalg.norm(noise, axis=1, keepdims=True)
  return noise - noise.mean(axis=0, keepdims=True)


def hidden_layer_range(weights: list) -> tuple:
  """(start, stop) flat indices of the largest array outside the output layer."""
  sizes = [int(np.prod(np.shape(w))) for w in weights]
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  layer = int(np.argmax(sizes[:-2]))
  return int(offsets[layer]), int(offsets[layer + 1])


def read_indicators(indicators: dict, previous: list, current: list) -> list:
  """'accepted', 'clipped' or 'rejected' per planted indicator, from two global models.

  `indicators['planted']` holds the (flat index, planted value) pairs;
  `previous` and `current` are the global model's values on the coordinates
  read (the indicators', then the quiet ones') before and after the round.
  """
  planted = np.array([v for _, v in indicators['planted']], np.float64)
  count = len(planted)
  update = np.asarray(previous, np.float64) - np.asarray(current, np.float64)  # G - G'
  noise = float(np.std(update[count:])) if len(update) > count else 0.0
  feedback = update[:count] / planted
  threshold = 3.0 * noise / np.abs(planted)
  top = feedback.max() if count else 0.0
  return ['rejected' if f <= t else 'accepted' if f >= 0.8 * top else 'clipped'
          for f, t in zip(feedback, threshold)]


def adapt(knobs: dict, verdicts: list) -> dict:
  """The group's next norm target and noise scale after the server's verdicts."""
  knobs = dict(knobs)
  if 'rejected' in verdicts:
    knobs['norm_target'] = max(0.3, knobs['norm_target'] * 0.8)
    knobs['noise_scale'] = min(1.0, knobs['noise_scale'] * 1.5)
  elif 'clipped' in verdicts:
    knobs['norm_target'] = knobs['norm_target'] * 0.9
  elif verdicts:
    knobs['norm_target'] = min(1.0, knobs['norm_target'] * 1.1)
  return knobs


class ThreeDFed(crafted.CraftedAttack):
  """3DFed without decoys (see the module doc)."""
  poisons_data = True

  def __init__(self):
    self.knobs = dict(START)
    self.indicators = None  # {'planted': [(index, value)], 'read': [indices], 'values': [...]}
    self.verdicts = []  # the last verdicts read, per planted indicator
    self._trainer = None

  def state(self):
    return dict(knobs=self.knobs, indicators=self.indicators, verdicts=self.verdicts)

  def restore(self, state):
    self.knobs = dict(state.get('knobs', START))
    self.indicators = state.get('indicators')
    self.verdicts = list(state.get('verdicts', []))

  def _read_verdicts(self, global_flat: np.ndarray) -> None:
    if self.indicators is None:
      return
    current = global_flat[self.indicators['read']]
    self.verdicts = read_indicators(self.indicators, self.indicators['values'], current)
    self.knobs = adapt(self.knobs, self.verdicts)

  def craft(self, view):
    if self._trainer is None:
      self._trainer = crafted.trainer_for(view)
    global_flat = crafted.flat(view.global_weights)
    self._read_verdicts(global_flat)
    updates, benign_norms, magnitude = {}, {}, np.zeros_like(global_flat)
    for client_id in view.data:
      x, y = view.data[client_id]
      benign = self._trainer.update(view.global_weights, x, y, view.rng)
      benign_norms[client_id] = crafted.norm(benign)
      xp, yp = view.poisoned(client_id)
      flags = np.any((xp != x).reshape(len(x), -1), axis=1) | (yp != y)
      backdoor = self._trainer.update(view.global_weights, xp, yp, view.rng,
                                      loss=constrained_loss, flags=flags)
      scale = min(self.knobs['norm_target'] * benign_norms[client_id] /
                  max(crafted.norm(backdoor), 1e-12), MAX_SCALE)
      updates[client_id] = crafted.flat(backdoor) * scale
      magnitude += np.abs(crafted.flat(benign)) + np.abs(updates[client_id])
    self._add_noise_masks(view, updates)
    self._plant_indicators(view, updates, benign_norms, magnitude, global_flat)
    return {c: crafted.unflat(u, view.global_weights) for c, u in updates.items()}

  def _add_noise_masks(self, view, updates: dict) -> None:
    """Zero-sum noise over the group on a few non-target output rows (step 3)."""
    target = view.trigger.target_label if view.trigger is not None else 0
    num_classes = int(np.shape(view.global_weights[-1])[0])
    others = [c for c in range(num_classes) if c != target]
    classes = view.rng.choice(others, size=min(NOISE_CLASSES, len(others)), replace=False)
    index = output_rows(view.global_weights, sorted(classes))
    noise = centred_noise(view.rng, len(updates), len(index))
    # One scale for the group, so that the masks still sum to zero.
    scale = self.knobs['noise_scale'] * np.mean([np.linalg.norm(u) for u in updates.values()])
    for row, client_id in zip(noise, updates):
      updates[client_id][index] += scale * row

  def _plant_indicators(self, view, updates: dict, benign_norms: dict, magnitude: np.ndarray,
                        global_flat: np.ndarray) -> None:
    """One indicator per attacker where its updates are quietest (step 4)."""
    start, stop = hidden_layer_range(view.global_weights)
    quietest = start + np.argsort(magnitude[start:stop], kind='stable')
    chosen = quietest[:len(updates)]
    planted = []
    for index, client_id in zip(chosen, updates):
      value = INDICATOR_FRACTION * benign_norms[client_id]
      updates[client_id][index] = value
      planted.append((int(index), float(value)))
    read = [int(i) for i in chosen] + [
        int(i) for i in quietest[len(updates):len(updates) + QUIET_COORDINATES]]
    self.indicators = dict(planted=planted, read=read,
                           values=[float(v) for v in global_flat[read]])


@registry.register('3dfed', 'Li et al. 2023, without decoys: constrained backdoor loss, norm '
                   'tuned to its own benign reference, zero-sum noise masks over the group, '
                   'and an indicator read from the next global model to adapt',
                   'G, the previous global model (its indicator coordinates), its own data, '
                   "the other attackers' updates")
def _three_d_fed(config):
  del config
  return ThreeDFed()

