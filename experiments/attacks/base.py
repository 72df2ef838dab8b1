"""What every attack shares: the hook interface the client work calls, and its helpers.

Each client dataset yields `(x, y, is_malicious)` batches; the flag (the same
for every example of a client) is read inside TFF, so benign and malicious
clients run one computation in the same runtime as the defense. An `Attack`
changes what a malicious client does through hooks the client work calls:

- `poisons_data` / `trigger_part`: the client trains on triggered, relabelled
  examples; DBA gives each attacker one trigger part;
- `loss`: the training loss (constrain-and-scale adds an anomaly term);
- `project`: after every step (PGD projects onto a ball around G);
- `update_scale`: the factor on the final update (constrain-and-scale's gamma).

Every hook receives the client's `malicious` flag and must leave a benign
client's values unchanged.
"""

from typing import Optional

import tensorflow as tf


def squared_distance(variables, reference) -> tf.Tensor:
  """sum_k ||v_k - r_k||^2 over a list of tensors: the anomaly loss."""
  return tf.add_n([tf.reduce_sum(tf.square(v - r)) for v, r in zip(variables, reference)])


def project_to_ball(variables, reference, radius) -> list:
  """reference + (v - reference) * min(1, radius / ||v - reference||), over all tensors."""
  norm = tf.sqrt(squared_distance(variables, reference))
  scale = tf.minimum(1.0, radius / tf.maximum(norm, 1e-12))
  return [r + (v - r) * scale for v, r in zip(variables, reference)]


def model_replacement_scale(clients_per_round: int, server_learning_rate: float,
                            attackers_per_round: float = 1.0) -> float:
  """gamma = n / (eta * k): k attackers together replace the global model after averaging.

  Bagdasaryan et al. derive gamma = n / eta for one attacker; with k attackers
  in a round each scaling by n / eta the replacement would overshoot k-fold.
  """
  return float(clients_per_round) / (float(server_learning_rate) * max(1.0, attackers_per_round))


def default_scale(config) -> float:
  """`--scale_factor`, or model replacement shared by the expected attackers per round."""
  if config.scale_factor is not None:
    return config.scale_factor
  return model_replacement_scale(config.clients_per_round, config.server_learning_rate,
                                 config.expected_attackers_per_round())


class Attack:
  """No attack: benign training. Subclasses override the hooks they need."""
  poisons_data = False
  # Whether the round's malicious clients send updates the harness crafted
  # (`crafted.CraftedAttack`) instead of running these hooks.
  sends_crafted_updates = False

  def trigger_part(self, attacker_index: int, num_parts: int) -> Optional[int]:
    """Which trigger part the attacker with this index stamps (None: the whole trigger)."""
    del attacker_index, num_parts
    return None

  def loss(self, malicious: tf.Tensor, task_loss: tf.Tensor, trainable, initial) -> tf.Tensor:
    """The loss a client minimises at each step."""
    del malicious, trainable, initial
    return task_loss

  def project(self, malicious: tf.Tensor, trainable, initial) -> Optional[list]:
    """New values for the trainable variables after a step (None: keep them)."""
    del malicious, trainable, initial
    return None

  def update_scale(self, malicious: tf.Tensor) -> tf.Tensor:
    """The factor on the client's final update."""
    del malicious
    return tf.constant(1.0)

  def trigger_values(self):
    """The trigger values BA is measured with (None: the task's own trigger)."""
    return None
