"""Krum and Multi-Krum (Blanchard et al. 2017) as a TFF aggregation factory."""

from typing import Optional

from tff_flame import gathered_factory
from tff_flame import robust_ops


class KrumFactory(gathered_factory.GatheredAggregationFactory):
  """Averages the `num_selected` updates with the lowest Krum scores.

  `num_selected=1` is Krum; `None` is Multi-Krum with m = n - f. When
  n <= 2f + 2 the neighbour count is clamped to >= 1 and the measurement
  `assumption_holds` is 0; the round still runs.
  """

  def __init__(self, num_byzantine: int, num_selected: Optional[int] = 1,
               max_clients: int = 1000):
    super().__init__(max_clients=max_clients)
    if not isinstance(num_byzantine, int) or num_byzantine < 0:
      raise ValueError(f'num_byzantine must be an int >= 0, got {num_byzantine!r}.')
    if num_selected is not None and (not isinstance(num_selected, int) or num_selected < 1):
      raise ValueError(f'num_selected must be None or an int >= 1, got {num_selected!r}.')
    self._num_byzantine = num_byzantine
    self._num_selected = num_selected

  def initial_state(self):
    return ()

  def server_step(self, state, updates, reference=None):
    aggregate, measurements = robust_ops.krum_round(updates, self._num_byzantine,
                                                    self._num_selected)
    return state, aggregate, measurements
