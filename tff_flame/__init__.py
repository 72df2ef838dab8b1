"""FLAME backdoor defense for TensorFlow Federated, with the baselines it is compared to."""

from tff_flame.coordinate_median_factory import CoordinateMedianFactory
from tff_flame.defense_registry import build_aggregator
from tff_flame.flame_factory import FlameFactory
from tff_flame.flame_ops import noise_lambda_from_privacy
from tff_flame.krum_factory import KrumFactory
from tff_flame.trimmed_mean_factory import TrimmedMeanFactory

__all__ = [
    'CoordinateMedianFactory', 'FlameFactory', 'KrumFactory', 'TrimmedMeanFactory',
    'build_aggregator', 'noise_lambda_from_privacy',
]
