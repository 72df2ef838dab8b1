"""`defense_in_the_loop`: the attackers run the server's defense on their own updates first.

In the spirit of the backdoor-critical-layer attack (Zhuang et al., ICLR
2024), each attack round the colluding attackers:

1. train, each on its own data, a benign update b_i and a backdoored one m_i
   (`--data_poisoning_rate` poisoned), and `REFERENCES` more benign updates on
   halves of their data: their local picture of a benign round;
2. find the backdoor-critical layers: the fewest layers (by the backdoor
   accuracy they restore when copied from the group's backdoored model into
   its benign one, on the attackers' own triggered data) that restore at
   least `CRITICAL_SHARE` of the backdoored model's;
3. craft u_i(lam) = lam m_i + max(0, 1 - lam) b_i on those layers and b_i
   elsewhere (the paper's w_g + lam (w_mal - w_g) + max(0, 1 - lam)
   (w_ben - w_g), in update form);
4. run the server's defense (the registered `--defense` with the run's
   flags, its pure server step, no TFF) on their benign updates and the
   crafted ones, and binary-search the largest lam in
   [0, `--ditl_max_lambda`] for which it admits the crafted updates at
   least as often as the benign updates b_i they replace (a majority filter
   rejects some benign clients too).

The attackers read G, their own data, each other's updates and the defense
with its parameters (not the benign clients' updates: their local round is
made of their own benign training).
"""

import collections
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from experiments import defenses
from experiments.attacks import crafted
from experiments.attacks import registry

REFERENCES = 2  # extra benign updates per attacker, each on half its data
CRITICAL_SHARE = 0.8  # share of the backdoored model's BA the critical layers must restore
SEARCH_STEPS = 8  # bisections of lam


def layer_slices(weights: list) -> list:
  """Flat (start, stop) of each layer: a kernel and the bias after it count as one."""
  sizes = [int(np.prod(np.shape(w))) for w in weights]
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  layers, i = [], 0
  while i < len(weights):
    pair = i + 1 < len(weights) and np.ndim(weights[i + 1]) == 1 and np.ndim(weights[i]) > 1
    stop = i + 2 if pair else i + 1
    layers.append((int(offsets[i]), int(offsets[stop])))
    i = stop
  return layers


def mix(benign: np.ndarray, backdoor: np.ndarray, lam: float, critical: np.ndarray) -> np.ndarray:
  """lam m + max(0, 1 - lam) b on the critical coordinates, b elsewhere."""
  return np.where(critical, lam * backdoor + max(0.0, 1.0 - lam) * benign, benign)


def admitted_by(server_step: Callable, rows: np.ndarray, global_flat: np.ndarray) -> np.ndarray:
  """bool [n]: which rows the defense's server step admits (all, if it reports none)."""
  blocks = [collections.OrderedDict(rows=tf.constant(rows, tf.float32),
                                    order=tf.range(len(rows), dtype=tf.int32))]
  measurements = server_step(blocks, tf.constant(global_flat, tf.float32))
  if 'admitted' not in measurements:
    return np.ones(len(rows), bool)
  return np.asarray(measurements['admitted']).astype(bool)


def strongest_admitted(admits: Callable[[float], bool], lam_max: float,
                       steps: int = SEARCH_STEPS) -> float:
  """The largest lam in [0, lam_max] with admits(lam), by bisection (lam_max if it admits;
  0 if even lam = 0, the benign update, is refused)."""
  if admits(lam_max):
    return lam_max
  low, high = 0.0, lam_max
  for _ in range(steps):
    middle = (low + high) / 2
    low, high = (middle, high) if admits(middle) else (low, middle)
  return low


class DefenseInTheLoop(crafted.CraftedAttack):
  """The strongest mix of backdoor and benign the defense, run locally, admits."""
  poisons_data = True

  def __init__(self, server_step: Optional[Callable], lam_max: float):
    """`server_step(blocks, global_flat) -> measurements`: the defense's, or None (no filter)."""
    self.server_step = server_step
    self.lam_max = lam_max
    self.lam = None  # the last round's choice
    self.critical_layers = []
    self._trainer = None

  def state(self):
    return dict(lam=self.lam, critical_layers=self.critical_layers)

  def restore(self, state):
    self.lam = state.get('lam')
    self.critical_layers = list(state.get('critical_layers', []))

  def critical(self, view, benign: np.ndarray, backdoor: np.ndarray) -> np.ndarray:
    """bool mask of the backdoor-critical layers' coordinates (step 2)."""
    x, y = _triggered_check_data(view)
    global_flat = crafted.flat(view.global_weights)
    accuracy = lambda update: self._trainer.accuracy(
        crafted.unflat(global_flat - update, view.global_weights), x, y)
    layers = layer_slices(view.global_weights)
    goal = CRITICAL_SHARE * accuracy(backdoor)
    gains = []
    for start, stop in layers:
      swapped = benign.copy()
      swapped[start:stop] = backdoor[start:stop]
      gains.append(accuracy(swapped))
    mask = np.zeros_like(benign, bool)
    self.critical_layers = []
    for layer in np.argsort(gains, kind='stable')[::-1]:
      start, stop = layers[layer]
      mask[start:stop] = True
      self.critical_layers.append(int(layer))
      if accuracy(np.where(mask, backdoor, benign)) >= goal:
        break
    return mask

  def craft(self, view):
    if self._trainer is None:
      self._trainer = crafted.trainer_for(view)
    G = view.global_weights  # pylint: disable=invalid-name
    benign, backdoor, references = {}, {}, []
    for client_id in view.data:
      x, y = view.data[client_id]
      benign[client_id] = crafted.flat(self._trainer.update(G, x, y, view.rng))
      backdoor[client_id] = crafted.flat(self._trainer.update(G, *view.poisoned(client_id),
                                                               view.rng))
      for _ in range(REFERENCES):
        half = view.rng.permutation(len(x))[:max(1, len(x) // 2)]
        references.append(crafted.flat(self._trainer.update(G, x[half], y[half], view.rng)))
    ids = list(view.data)
    critical = self.critical(view, np.mean([benign[c] for c in ids], axis=0),
                             np.mean([backdoor[c] for c in ids], axis=0))
    local_benign = np.array([benign[c] for c in ids] + references)
    global_flat = crafted.flat(G)

    def admits(lam: float) -> bool:
      if self.server_step is None:
        return True
      crafted_rows = np.array([mix(benign[c], backdoor[c], lam, critical) for c in ids])
      admitted = admitted_by(self.server_step, np.concatenate([local_benign, crafted_rows]),
                             global_flat)
      # Admitted at least as often as the benign updates they replace (the first rows): a
      # majority filter rejects some benign clients too.
      return admitted[len(local_benign):].mean() >= admitted[:len(ids)].mean()

    self.lam = strongest_admitted(admits, self.lam_max)
    return {c: crafted.unflat(mix(benign[c], backdoor[c], self.lam, critical), G) for c in ids}


def _triggered_check_data(view) -> tuple:
  """The attackers' own inputs whose label is not the target, all triggered, labelled target."""
  xs, ys = [], []
  for client_id in view.data:
    x, y = view.poisoned(client_id, rate=1.0)
    xs.append(x)
    ys.append(y)
  x, y = np.concatenate(xs), np.concatenate(ys)
  originals = np.concatenate([view.data[c][1] for c in view.data])
  keep = originals != y  # rows whose label the poisoning changed
  return x[keep], y[keep]


def local_server_step(factory) -> Optional[Callable]:
  """`server_step(blocks, global_flat) -> measurements` of a gathering defense; None otherwise."""
  if not hasattr(factory, 'server_step'):
    return None

  def step(blocks, global_flat):
    global_model = global_flat if factory.requires_global_model else None
    return factory.server_step(factory.initial_state(), blocks, global_model)[2]
  return step


@registry.register('defense_in_the_loop', 'runs the server\'s defense locally on its own benign '
                   'and crafted updates and sends the strongest mix lam m + (1 - lam) b on the '
                   'backdoor-critical layers that it admits (`--ditl_max_lambda`)',
                   'G, its own data, the other attackers\' updates, the defense and its flags')
def _defense_in_the_loop(config):
  return DefenseInTheLoop(local_server_step(defenses.defense_factory(config)),
                          config.ditl_max_lambda)
