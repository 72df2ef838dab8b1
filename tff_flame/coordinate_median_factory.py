"""Coordinate-wise median (Yin et al. 2018) as a TFF aggregation factory."""

from tff_flame import flame_ops
from tff_flame import gathered_factory
from tff_flame import robust_ops


class CoordinateMedianFactory(gathered_factory.GatheredAggregationFactory):
  """The per-coordinate median of the finite client updates."""

  def initial_state(self):
    return ()

  def server_step(self, state, updates, reference=None):
    aggregate, measurements = robust_ops.coordinate_round(updates, flame_ops.median)
    return state, aggregate, measurements
