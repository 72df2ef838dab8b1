"""FLAME backdoor defense for TensorFlow Federated."""

from tff_flame.flame_factory import FlameFactory
from tff_flame.flame_ops import noise_lambda_from_privacy

__all__ = ['FlameFactory', 'noise_lambda_from_privacy']
