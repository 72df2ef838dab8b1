"""The attacks that ignore the defense: data poisoning, DBA, constrain-and-scale, PGD.

Each is a set of hooks on the client's training (see `base.Attack`), run
inside TFF's client work for the clients flagged malicious.
"""

from typing import Optional

import tensorflow as tf

from experiments.attacks import base
from experiments.attacks import registry

OWN_DATA = 'its own data; G only as the starting point of its training'


class DataPoisoning(base.Attack):
  """Trains on poisoned data only."""
  poisons_data = True


class DistributedBackdoor(DataPoisoning):
  """DBA (Xie et al. 2020): the k-th attacker stamps trigger part k mod num_parts."""

  def trigger_part(self, attacker_index: int, num_parts: int) -> Optional[int]:
    return attacker_index % num_parts


class ConstrainAndScale(DataPoisoning):
  """Bagdasaryan et al. 2020: loss = alpha * task + (1 - alpha) * ||W - G||^2, update * gamma."""

  def __init__(self, alpha: float, scale_factor: float):
    self.alpha = alpha
    self.scale_factor = scale_factor

  def loss(self, malicious, task_loss, trainable, initial):
    alpha = tf.where(malicious, self.alpha, 1.0)
    return alpha * task_loss + (1.0 - alpha) * base.squared_distance(trainable, initial)

  def update_scale(self, malicious):
    return tf.where(malicious, self.scale_factor, 1.0)


class ProjectedGradientDescent(DataPoisoning):
  """PGD (Sun et al. 2019; Wang et al. 2020): stay within `radius` of G after every step."""

  def __init__(self, radius: float):
    self.radius = radius

  def project(self, malicious, trainable, initial):
    projected = base.project_to_ball(trainable, initial, self.radius)
    return [tf.where(malicious, p, v) for v, p in zip(trainable, projected)]


class ScaledProjectedGradientDescent(ProjectedGradientDescent):
  """PGD with model replacement (Wang et al. 2020): PGD, then the update times gamma."""

  def __init__(self, radius: float, scale_factor: float):
    super().__init__(radius)
    self.scale_factor = scale_factor

  def update_scale(self, malicious):
    return tf.where(malicious, self.scale_factor, 1.0)


@registry.register('none', 'no attack: every client trains benignly', 'nothing')
def _none(config):
  del config
  return base.Attack()


@registry.register('data_poisoning', 'trains on its data with `--data_poisoning_rate` of it '
                   'triggered and relabelled', OWN_DATA)
def _data_poisoning(config):
  del config
  return DataPoisoning()


@registry.register('constrain_and_scale', 'Bagdasaryan et al. 2020: loss = alpha * task loss + '
                   '(1 - alpha) * ||W - G||^2 (`--alpha`), update scaled by gamma '
                   '(`--scale_factor`)', 'G, its own data, the expected attackers per round')
def _constrain_and_scale(config):
  return ConstrainAndScale(config.alpha, base.default_scale(config))


@registry.register('pgd', 'projected onto the L2 ball of radius `--pgd_radius` around G after '
                   'every step (Sun et al. 2019; Wang et al. 2020)', 'G, its own data')
def _pgd(config):
  return ProjectedGradientDescent(config.pgd_radius)


@registry.register('pgd_scaled', 'PGD, then the update scaled by gamma (`--scale_factor`; '
                   'Wang et al. 2020)', 'G, its own data, the expected attackers per round')
def _pgd_scaled(config):
  return ScaledProjectedGradientDescent(config.pgd_radius, base.default_scale(config))


@registry.register('dba', 'Xie et al. 2020 (image tasks): the k-th attacker stamps trigger part '
                   'k mod 4; BA is measured with the full trigger', OWN_DATA)
def _dba(config):
  del config
  return DistributedBackdoor()
