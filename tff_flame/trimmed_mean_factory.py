"""Coordinate-wise trimmed mean (Yin et al. 2018) as a TFF aggregation factory."""

from tff_flame import gathered_factory
from tff_flame import robust_ops


class TrimmedMeanFactory(gathered_factory.GatheredAggregationFactory):
  """Per coordinate, drops the floor(beta * n) largest and smallest values, then averages."""

  def __init__(self, trim_fraction: float = 0.2, max_clients: int = 1000):
    super().__init__(max_clients=max_clients)
    if not 0.0 <= trim_fraction < 0.5:
      raise ValueError(f'trim_fraction must be in [0, 0.5), got {trim_fraction!r}.')
    self._trim_fraction = float(trim_fraction)

  def initial_state(self):
    return ()

  def server_step(self, state, updates, reference=None):
    aggregate, measurements = robust_ops.coordinate_round(
        updates, lambda x: robust_ops.trimmed_mean(x, self._trim_fraction))
    return state, aggregate, measurements
