"""Every defense by name (one registry), and the ground-truth wrapper that measures TPR/TNR.

Norm bounding and weak DP reuse TFF's own factories (`clipping_factory`,
`DifferentiallyPrivateFactory.gaussian_fixed`) behind
`tff_flame.NonFiniteFilterFactory`, since TFF's clipping turns one NaN client
into a NaN aggregate; the rest are `tff_flame`'s.
"""

import collections
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

import tff_flame

Defense = collections.namedtuple('Defense', 'name help build filtering')
_DEFENSES = collections.OrderedDict()


def register(name: str, help: str, filtering: bool = False):  # pylint: disable=redefined-builtin
  """Registers `build(config) -> factory` as `--defense=name`.

  `filtering`: the factory reports a per-client `admitted`, so TPR/TNR are
  measured. Adding a defense touches its module, its entry here and its tests.
  """
  def add(build: Callable[[Any], tff.aggregators.UnweightedAggregationFactory]):
    if name in _DEFENSES:
      raise ValueError(f'defense {name!r} is registered twice.')
    _DEFENSES[name] = Defense(name, help, build, filtering)
    return build
  return add


def max_clients(config) -> int:
  """The most clients a gathering defense accepts in a round: the configured round size."""
  return config.clients_per_round


def num_byzantine(config) -> int:
  """Krum's f: `--num_byzantine`, or the expected attackers per round."""
  if config.num_byzantine is not None:
    return config.num_byzantine
  return config.expected_attackers_per_round()


@register('none', 'FedAvg mean (`tff.aggregators.UnweightedMeanFactory`)')
def _mean(config):
  del config
  return tff.aggregators.UnweightedMeanFactory()


@register('flame', 'FLAME (`tff_flame.FlameFactory`)', filtering=True)
def _flame(config):
  return tff_flame.FlameFactory(noise_lambda=config.noise_lambda, seed=config.seed,
                                clustering_space=config.clustering_space,
                                distance=config.flame_distance, max_clients=max_clients(config))


@register('flame_hardened', 'FLAME after rejecting groups of `--alike_group` or more updates '
          'more alike than benign ones (`HardenedFlameFactory`)', filtering=True)
def _flame_hardened(config):
  return tff_flame.HardenedFlameFactory(
      alike_threshold=config.alike_threshold, alike_group=config.alike_group,
      noise_lambda=config.noise_lambda, seed=config.seed,
      clustering_space=config.clustering_space, distance=config.flame_distance,
      max_clients=max_clients(config))


@register('krum', 'Krum (Blanchard et al. 2017; `KrumFactory`)', filtering=True)
def _krum(config):
  return tff_flame.KrumFactory(num_byzantine(config), num_selected=1,
                               max_clients=max_clients(config))


@register('multi_krum', 'Multi-Krum, the n - f lowest Krum scores averaged (`KrumFactory`)',
          filtering=True)
def _multi_krum(config):
  return tff_flame.KrumFactory(num_byzantine(config), num_selected=None,
                               max_clients=max_clients(config))


@register('median', 'coordinate-wise median (Yin et al. 2018; `CoordinateMedianFactory`)')
def _median(config):
  return tff_flame.CoordinateMedianFactory(max_clients=max_clients(config))


@register('trimmed_mean', 'coordinate-wise trimmed mean (Yin et al. 2018; `TrimmedMeanFactory`)')
def _trimmed_mean(config):
  return tff_flame.TrimmedMeanFactory(config.trim_fraction, max_clients=max_clients(config))


@register('norm_bounding', "each update clipped to `--norm_bound`, then the mean (TFF's "
          '`clipping_factory`)')
def _norm_bounding(config):
  # Weighted mean with weight 0 for non-finite clients (see NonFiniteFilterFactory).
  clipped_mean = tff.aggregators.clipping_factory(config.norm_bound,
                                                  tff.aggregators.MeanFactory())
  return tff_flame.NonFiniteFilterFactory(clipped_mean, inner_name='norm_bounding')


@register('weak_dp', "norm bounding + Gaussian noise (TFF's "
          '`DifferentiallyPrivateFactory.gaussian_fixed`)')
def _weak_dp(config):
  # TF-Privacy draws this noise unseeded: weak_dp runs are not bit-reproducible.
  dp_mean = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
      noise_multiplier=config.dp_noise_multiplier, clients_per_round=config.clients_per_round,
      clip=config.norm_bound)
  return tff_flame.NonFiniteFilterFactory(dp_mean, inner_name='weak_dp')


@register('foolsgold', 'FoolsGold (Fung et al. 2020), per round (`FoolsGoldFactory`)',
          filtering=True)
def _foolsgold(config):
  return tff_flame.FoolsGoldFactory(kappa=config.foolsgold_kappa,
                                    max_clients=max_clients(config))


@register('freqfed', 'FreqFed (Fereidooni et al. 2024): HDBSCAN on the low-frequency DCT '
          'components of the models (`--clustering_space`), the mean of the largest cluster '
          '(`FreqFedFactory`)', filtering=True)
def _freqfed(config):
  return tff_flame.FreqFedFactory(clustering_space=config.clustering_space,
                                  max_clients=max_clients(config))


@register('multi_metrics', 'Multi-Metrics (Huang et al. 2023): per client the summed cosine, '
          'Manhattan and length distances to the others, whitened; the '
          '`--multi_metrics_fraction` lowest averaged (`MultiMetricsFactory`)', filtering=True)
def _multi_metrics(config):
  return tff_flame.MultiMetricsFactory(fraction=config.multi_metrics_fraction,
                                       metric_space=config.clustering_space,
                                       max_clients=max_clients(config))


DEFENSES = tuple(_DEFENSES)
FILTERING = tuple(name for name, d in _DEFENSES.items() if d.filtering)


def defense(name: str) -> Defense:
  """The registered defense `name`; ValueError names `--defense` when it is unknown."""
  if name not in _DEFENSES:
    raise ValueError(f'--defense must be one of {", ".join(_DEFENSES)}; got {name!r}.')
  return _DEFENSES[name]


def defense_factory(config) -> tff.aggregators.UnweightedAggregationFactory:
  """The configured defense (`config.defense`), built from the config's own fields."""
  return defense(config.defense).build(config)


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
