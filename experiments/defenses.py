"""Every defense by name, and the ground-truth wrapper that measures a filter's TPR/TNR.

Norm bounding and weak DP reuse TFF's own factories (`clipping_factory`,
`DifferentiallyPrivateFactory.gaussian_fixed`) behind
`tff_flame.NonFiniteFilterFactory`, since TFF's clipping turns one NaN client
into a NaN aggregate; the rest are `tff_flame`'s.
"""

import collections
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

import tff_flame
from experiments import config as config_lib

DEFENSES = config_lib.DEFENSES
# Defenses whose per-client `admitted` makes TPR/TNR meaningful (FoolsGold: weight > 0).
FILTERING = ('flame', 'krum', 'multi_krum', 'foolsgold')


def build_aggregator(name: str,
                     noise_lambda: float = 0.001,
                     clustering_space: str = 'update',
                     flame_distance: Optional[str] = None,
                     seed: int = 0,
                     num_byzantine: int = 0,
                     trim_fraction: float = 0.2,
                     norm_bound: float = 1.0,
                     dp_noise_multiplier: float = 0.01,
                     clients_per_round: Optional[int] = None,
                     foolsgold_kappa: float = 1.0,
                     max_clients: Optional[int] = None
                     ) -> tff.aggregators.UnweightedAggregationFactory:
  """The named defense (see DEFENSES); ValueError names the bad argument.

  Gathering defenses (flame, krum, multi_krum, median, trimmed_mean, foolsgold) accept
  rounds of up to `max_clients` clients (default: `clients_per_round`, else
  1000), which also sets the gather's number of groups.
  """
  max_clients = max_clients or clients_per_round or 1000
  if name == 'none':
    return tff.aggregators.UnweightedMeanFactory()
  if name == 'flame':
    return tff_flame.FlameFactory(noise_lambda=noise_lambda, seed=seed,
                                  clustering_space=clustering_space, distance=flame_distance,
                                  max_clients=max_clients)
  if name == 'krum':
    return tff_flame.KrumFactory(num_byzantine, num_selected=1, max_clients=max_clients)
  if name == 'multi_krum':
    return tff_flame.KrumFactory(num_byzantine, num_selected=None,
                                 max_clients=max_clients)
  if name == 'median':
    return tff_flame.CoordinateMedianFactory(max_clients=max_clients)
  if name == 'trimmed_mean':
    return tff_flame.TrimmedMeanFactory(trim_fraction, max_clients=max_clients)
  if name == 'foolsgold':
    return tff_flame.FoolsGoldFactory(kappa=foolsgold_kappa, max_clients=max_clients)
  if not norm_bound > 0:
    raise ValueError(f'norm_bound must be > 0, got {norm_bound!r}.')
  if name == 'norm_bounding':
    # Weighted mean with weight 0 for non-finite clients (see NonFiniteFilterFactory).
    clipped_mean = tff.aggregators.clipping_factory(norm_bound, tff.aggregators.MeanFactory())
    return tff_flame.NonFiniteFilterFactory(clipped_mean, inner_name='norm_bounding')
  if name == 'weak_dp':
    if not dp_noise_multiplier >= 0:
      raise ValueError(f'dp_noise_multiplier must be >= 0, got {dp_noise_multiplier!r}.')
    if not clients_per_round or clients_per_round < 1:
      raise ValueError(f'weak_dp needs clients_per_round >= 1, got {clients_per_round!r}.')
    # TF-Privacy draws this noise unseeded: weak_dp runs are not bit-reproducible.
    dp_mean = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
        noise_multiplier=dp_noise_multiplier, clients_per_round=clients_per_round,
        clip=norm_bound)
    return tff_flame.NonFiniteFilterFactory(dp_mean, inner_name='weak_dp')
  raise ValueError(f'defense must be one of {DEFENSES}, got {name!r}.')


def defense_factory(config: config_lib.ExperimentConfig
                    ) -> tff.aggregators.UnweightedAggregationFactory:
  """The configured defense; Krum's f defaults to the expected attackers per round."""
  num_byzantine = config.num_byzantine
  if num_byzantine is None:
    num_byzantine = config.expected_attackers_per_round()
  return build_aggregator(
      config.defense, noise_lambda=config.noise_lambda, clustering_space=config.clustering_space,
      flame_distance=config.flame_distance, seed=config.seed, num_byzantine=num_byzantine,
      trim_fraction=config.trim_fraction,
      norm_bound=config.norm_bound, dp_noise_multiplier=config.dp_noise_multiplier,
      clients_per_round=config.clients_per_round, foolsgold_kappa=config.foolsgold_kappa)


def filter_rates(is_malicious: tf.Tensor, admitted: tf.Tensor) -> dict:
  """TPR = malicious rejected / malicious, TNR = benign admitted / benign (NaN if none)."""
  malicious = tf.equal(is_malicious, 1)
  admitted = tf.equal(admitted, 1)
  count = lambda mask: tf.reduce_sum(tf.cast(mask, tf.float64))
  num_malicious = count(malicious)
  num_benign = count(tf.logical_not(malicious))
  nan = tf.constant(float('nan'), tf.float64)
  tpr = tf.where(num_malicious > 0,
                 count(malicious & tf.logical_not(admitted)) / tf.maximum(num_malicious, 1.0), nan)
  tnr = tf.where(num_benign > 0,
                 count(tf.logical_not(malicious) & admitted) / tf.maximum(num_benign, 1.0), nan)
  return dict(num_malicious=tf.cast(num_malicious, tf.int32), tpr=tpr, tnr=tnr)


def create_with_ground_truth(factory: tff.aggregators.UnweightedAggregationFactory,
                             value_type) -> tff.templates.MeasuredProcess:
  """`next(state, (update, is_malicious)@CLIENTS, global_model@SERVER)` for any defense.

  For a gathering defense the int32 flag travels as its row-aligned payload,
  so the measurements gain exact `num_malicious`, `tpr` and `tnr` whatever
  order TFF gathers clients in. Other defenses (a plain mean, TFF's clipping
  or DP) do not filter: the flag is dropped. The global model is passed on
  only to a defense that `requires_global_model`.
  """
  client_type = tff.FederatedType(
      tff.StructWithPythonType([value_type, tff.TensorType(np.int32)], tuple), tff.CLIENTS)
  global_model_type = tff.FederatedType(value_type, tff.SERVER)
  if isinstance(factory, tff_flame.GatheredAggregationFactory):
    inner = factory.create_gathered(value_type, payload_type=tff.TensorType(np.int32))
    measurements_type = inner.next.type_signature.result.measurements.member

    @tff.tensorflow.computation(measurements_type)
    def add_rates(measurements):
      rates = filter_rates(measurements['payload'], measurements['admitted'])
      return collections.OrderedDict(
          [(k, v) for k, v in measurements.items() if k != 'payload'], **rates)

    @tff.federated_computation(inner.initialize.type_signature.result, client_type,
                               global_model_type)
    def gathered_next(state, value, global_model):
      if factory.requires_global_model:
        output = inner.next(state, value, global_model)
      else:
        output = inner.next(state, value)
      return tff.templates.MeasuredProcessOutput(
          output.state, output.result, tff.federated_map(add_rates, output.measurements))
    return tff.templates.MeasuredProcess(inner.initialize, gathered_next)

  inner = factory.create(value_type)

  @tff.federated_computation(inner.initialize.type_signature.result, client_type,
                             global_model_type)
  def plain_next(state, value, global_model):
    del global_model
    return inner.next(state, value[0])
  return tff.templates.MeasuredProcess(inner.initialize, plain_next)
