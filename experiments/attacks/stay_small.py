"""`stay_small`: PGD without scaling, kept inside the benign norms FLAME clips to.

Each attacker first trains on its own clean data from G, as a benign client
would; the norm of that update is its estimate of a benign client's norm,
hence of FLAME's clipping bound S_t (the median norm). It then trains on its
poisoned data, projected after every step onto the L2 ball of radius
`--radius_fraction` x that estimate around G, and sends the result unscaled.
Below S_t, clipping never touches it; small, alike updates sit at the centre
of the benign spread, where FLAME's majority cluster forms.

The attacker reads G and its own data; nothing from the server or other
clients.
"""


from experiments.attacks import crafted
from experiments.attacks import registry


class StaySmall(crafted.CraftedAttack):
  """PGD to `radius_fraction` x the attacker's own clean-update norm, no scaling."""
  poisons_data = True

  def __init__(self, radius_fraction: float):
    self.radius_fraction = radius_fraction
    self.bounds = {}  # client id -> its estimate of S_t in the last round it crafted
    self._trainer = None

  def trainer(self, view: crafted.AttackerView) -> crafted.LocalTrainer:
    if self._trainer is None:
      self._trainer = crafted.trainer_for(view)
    return self._trainer

  def expected_bound(self, view: crafted.AttackerView, client_id: int) -> float:
    """The attacker's estimate of S_t: the norm of its own clean update from G."""
    x, y = view.data[client_id]
    return crafted.norm(self.trainer(view).update(view.global_weights, x, y, view.rng))

  def gradient_mask(self, view: crafted.AttackerView, client_id: int):
    """Arrays multiplied into every poisoned gradient (None: none; Neurotoxin's mask)."""
    del view, client_id
    return None

  def craft(self, view):
    updates = {}
    self.bounds = {c: self.expected_bound(view, c) for c in view.data}
    for client_id in view.data:
      radius = self.radius_fraction * self.bounds[client_id]
      mask = self.gradient_mask(view, client_id)
      x, y = view.poisoned(client_id)
      updates[client_id] = self.trainer(view).update(
          view.global_weights, x, y, view.rng, gradient_mask=mask,
          after_step=crafted.ball_projection(view.global_weights, radius))
    return updates


@registry.register('stay_small', 'PGD without scaling, radius `--radius_fraction` x the norm '
                   'of its own clean update from G (its estimate of the clipping bound S_t)',
                   'G, its own data')
def _stay_small(config):
  return StaySmall(config.radius_fraction)
