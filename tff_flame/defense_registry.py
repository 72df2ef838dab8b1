"""Every defense by name, as an unweighted TFF aggregation factory.

Norm bounding and weak DP reuse TFF's own factories (`clipping_factory`,
`DifferentiallyPrivateFactory.gaussian_fixed`) behind `NonFiniteFilterFactory`,
since TFF's clipping turns one NaN client into a NaN aggregate; the rest are
this package's.
"""

from typing import Optional

import tensorflow_federated as tff

from tff_flame import coordinate_median_factory
from tff_flame import flame_factory
from tff_flame import krum_factory
from tff_flame import non_finite_filter
from tff_flame import trimmed_mean_factory

DEFENSES = ('none', 'flame', 'krum', 'multi_krum', 'median', 'trimmed_mean', 'norm_bounding',
            'weak_dp')
FILTERING = ('flame', 'krum', 'multi_krum')


def build_aggregator(name: str,
                     noise_lambda: float = 0.001,
                     clustering_space: str = 'update',
                     seed: int = 0,
                     num_byzantine: int = 0,
                     trim_fraction: float = 0.2,
                     norm_bound: float = 1.0,
                     dp_noise_multiplier: float = 0.01,
                     clients_per_round: Optional[int] = None
                     ) -> tff.aggregators.UnweightedAggregationFactory:
  """The named defense (see DEFENSES); ValueError names the bad argument."""
  if name == 'none':
    return tff.aggregators.UnweightedMeanFactory()
  if name == 'flame':
    return flame_factory.FlameFactory(noise_lambda=noise_lambda, seed=seed,
                                      clustering_space=clustering_space)
  if name == 'krum':
    return krum_factory.KrumFactory(num_byzantine, num_selected=1)
  if name == 'multi_krum':
    return krum_factory.KrumFactory(num_byzantine, num_selected=None)
  if name == 'median':
    return coordinate_median_factory.CoordinateMedianFactory()
  if name == 'trimmed_mean':
    return trimmed_mean_factory.TrimmedMeanFactory(trim_fraction)
  if not norm_bound > 0:
    raise ValueError(f'norm_bound must be > 0, got {norm_bound!r}.')
  if name == 'norm_bounding':
    # Weighted mean with weight 0 for non-finite clients (see NonFiniteFilterFactory).
    clipped_mean = tff.aggregators.clipping_factory(norm_bound, tff.aggregators.MeanFactory())
    return non_finite_filter.NonFiniteFilterFactory(clipped_mean, inner_name='norm_bounding')
  if name == 'weak_dp':
    if not dp_noise_multiplier >= 0:
      raise ValueError(f'dp_noise_multiplier must be >= 0, got {dp_noise_multiplier!r}.')
    if not clients_per_round or clients_per_round < 1:
      raise ValueError(f'weak_dp needs clients_per_round >= 1, got {clients_per_round!r}.')
    # TF-Privacy draws this noise unseeded: weak_dp runs are not bit-reproducible.
    dp_mean = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
        noise_multiplier=dp_noise_multiplier, clients_per_round=clients_per_round,
        clip=norm_bound)
    return non_finite_filter.NonFiniteFilterFactory(dp_mean, inner_name='weak_dp')
  raise ValueError(f'defense must be one of {DEFENSES}, got {name!r}.')
