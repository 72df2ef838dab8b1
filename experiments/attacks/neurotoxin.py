"""`neurotoxin` (Zhang et al., ICML 2022): poison only the coordinates benign training uses least.

Each attacker takes the gradient of the task loss on its own clean data at G
(its view of what benign clients will change), keeps the `--neurotoxin_keep`
share of coordinates with the smallest |gradient| (over the whole model),
and trains on its poisoned data with every gradient multiplied by that mask,
projected after each step onto the ball of `--radius_fraction` x its own
clean-update norm around G (as `stay_small`). The backdoor then sits where
later benign updates rarely overwrite it, so it lasts.

The attacker reads G and its own data.
"""

import numpy as np

from experiments.attacks import crafted
from experiments.attacks import registry
from experiments.attacks import stay_small


def bottom_mask(gradient: list, keep: float) -> list:
  """1 on the `keep` share of coordinates with the smallest |gradient|, 0 elsewhere."""
  magnitude = np.abs(crafted.flat(gradient))
  count = int(round(keep * magnitude.size))
  mask = np.zeros(magnitude.size, np.float32)
  mask[np.argsort(magnitude, kind='stable')[:count]] = 1.0
  return crafted.unflat(mask, gradient)


class Neurotoxin(stay_small.StaySmall):
  """`stay_small`'s PGD with the poisoned gradients masked to the benign gradient's bottom."""

  def __init__(self, keep: float, radius_fraction: float):
    super().__init__(radius_fraction)
    self.keep = keep
    self.masks = {}  # client id -> its mask in the last round it crafted

  def gradient_mask(self, view, client_id):
    x, y = view.data[client_id]
    benign = self.trainer(view).mean_gradient(view.global_weights, x, y)
    self.masks[client_id] = bottom_mask(benign, self.keep)
    return self.masks[client_id]


@registry.register('neurotoxin', 'Zhang et al. 2022: poisoned gradients masked to the '
                   '`--neurotoxin_keep` share of coordinates with the smallest benign gradient '
                   "at G (on its own clean data), then stay_small's PGD",
                   'G, its own data')
def _neurotoxin(config):
  return Neurotoxin(config.neurotoxin_keep, config.radius_fraction)
