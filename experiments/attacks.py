"""Backdoor attacks as pluggable hooks, and the client work that runs benign and malicious clients.

Each client dataset yields `(x, y, is_malicious)` batches; the flag (the same
for every example of a client) is read inside TFF, so benign and malicious
clients run one computation in the same runtime as the defense. An `Attack`
changes what a malicious client does through hooks the client work calls:

- `poisons_data` / `trigger_part`: the client trains on triggered, relabelled
  examples (all attacks but `none`); DBA gives each attacker one trigger part;
- `loss`: the training loss (constrain-and-scale adds an anomaly term);
- `project`: after every step (PGD projects onto a ball around G);
- `update_scale`: the factor on the final update (constrain-and-scale's gamma).

Every hook receives the client's `malicious` flag and must leave a benign
client's values unchanged. Every client sends `((G - W), is_malicious)`: the
update in TFF's sign convention with its ground-truth flag.
"""

import collections
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from experiments import config as config_lib


def squared_distance(variables, reference) -> tf.Tensor:
  """sum_k ||v_k - r_k||^2 over a list of tensors: the anomaly loss."""
  return tf.add_n([tf.reduce_sum(tf.square(v - r)) for v, r in zip(variables, reference)])


def project_to_ball(variables, reference, radius: float) -> list:
  """reference + (v - reference) * min(1, radius / ||v - reference||), over all tensors."""
  norm = tf.sqrt(squared_distance(variables, reference))
  scale = tf.minimum(1.0, radius / tf.maximum(norm, 1e-12))
  return [r + (v - r) * scale for v, r in zip(variables, reference)]


class Attack:
  """No attack: benign training. Subclasses override the hooks they need."""
  poisons_data = False

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


class DataPoisoning(Attack):
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
    return alpha * task_loss + (1.0 - alpha) * squared_distance(trainable, initial)

  def update_scale(self, malicious):
    return tf.where(malicious, self.scale_factor, 1.0)


class ProjectedGradientDescent(DataPoisoning):
  """PGD (Sun et al. 2019; Wang et al. 2020): stay within `radius` of G after every step."""

  def __init__(self, radius: float):
    self.radius = radius

  def project(self, malicious, trainable, initial):
    projected = project_to_ball(trainable, initial, self.radius)
    return [tf.where(malicious, p, v) for v, p in zip(trainable, projected)]


class ScaledProjectedGradientDescent(ProjectedGradientDescent):
  """PGD with model replacement (Wang et al. 2020): PGD, then the update times gamma."""

  def __init__(self, radius: float, scale_factor: float):
    super().__init__(radius)
    self.scale_factor = scale_factor

  def update_scale(self, malicious):
    return tf.where(malicious, self.scale_factor, 1.0)


def model_replacement_scale(clients_per_round: int, server_learning_rate: float,
                            attackers_per_round: float = 1.0) -> float:
  """gamma = n / (eta * k): k attackers together replace the global model after averaging.

  Bagdasaryan et al. derive gamma = n / eta for one attacker; with k attackers
  in a round each scaling by n / eta the replacement would overshoot k-fold.
  """
  return float(clients_per_round) / (float(server_learning_rate) * max(1.0, attackers_per_round))


def build_attack(config: config_lib.ExperimentConfig) -> Attack:
  """The configured attack; gamma defaults to model replacement shared by the expected attackers."""
  if config.attack == 'none':
    return Attack()
  if config.attack == 'data_poisoning':
    return DataPoisoning()
  if config.attack == 'dba':
    return DistributedBackdoor()
  if config.attack == 'pgd':
    return ProjectedGradientDescent(config.pgd_radius)
  scale = config.scale_factor
  if scale is None:
    scale = model_replacement_scale(config.clients_per_round, config.server_learning_rate,
                                    config.expected_attackers_per_round())
  if config.attack == 'pgd_scaled':
    return ScaledProjectedGradientDescent(config.pgd_radius, scale)
  if config.attack == 'constrain_and_scale':
    return ConstrainAndScale(config.alpha, scale)
  raise ValueError(f'--attack must be one of {", ".join(config_lib.ATTACKS)}; '
                   f'got {config.attack!r}.')


def task_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Sparse cross-entropy on logits; for [batch, time] labels padding (0) is masked."""
  losses = tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
  if y.shape.rank == 2:
    mask = tf.cast(tf.not_equal(y, 0), losses.dtype)
    return tf.reduce_sum(losses * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
  return tf.reduce_mean(losses)


def build_client_work(keras_model_fn: Callable[[], tf.keras.Model], element_spec,
                      learning_rate: float, attack: Attack
                      ) -> tff.learning.templates.ClientWorkProcess:
  """Local SGD for every client, with `attack`'s hooks for clients flagged malicious.

  Args:
    keras_model_fn: returns a fresh Keras model with logits output.
    element_spec: the client datasets' element spec, `(x, y, is_malicious)`.
    learning_rate: client SGD learning rate.
    attack: what malicious clients do on top of training.
  """
  def model_weights_fn():
    model = keras_model_fn()
    return tff.learning.models.ModelWeights(
        trainable=[v.read_value() for v in model.trainable_variables],
        non_trainable=[v.read_value() for v in model.non_trainable_variables])

  weights_type = tff.tensorflow.computation(model_weights_fn).type_signature.result
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(element_spec))

  @tff.tensorflow.computation(weights_type, data_type)
  def client_update(weights, dataset):
    model = keras_model_fn()

    @tf.function
    def train(initial_trainable, initial_non_trainable, dataset):
      for v, w in zip(model.trainable_variables, initial_trainable):
        v.assign(w)
      for v, w in zip(model.non_trainable_variables, initial_non_trainable):
        v.assign(w)
      malicious = dataset.reduce(False, lambda acc, batch: acc | tf.reduce_any(batch[2]))
      num_examples = tf.constant(0, tf.int32)
      loss_sum = tf.constant(0.0, tf.float32)
      for x, y, _ in dataset:
        with tf.GradientTape() as tape:
          loss = task_loss(y, model(x, training=True))
          total = attack.loss(malicious, loss, model.trainable_variables, initial_trainable)
        grads = tape.gradient(total, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
          if g is not None:  # Embedding gradients arrive as IndexedSlices.
            v.assign_sub(learning_rate * tf.convert_to_tensor(g))
        projected = attack.project(malicious, model.trainable_variables, initial_trainable)
        if projected is not None:
          for v, p in zip(model.trainable_variables, projected):
            v.assign(p)
        num_examples += tf.shape(x)[0]
        loss_sum += loss * tf.cast(tf.shape(x)[0], tf.float32)
      scale = attack.update_scale(malicious)
      update = [(w - v) * scale for v, w in zip(model.trainable_variables, initial_trainable)]
      return update, tf.cast(malicious, tf.int32), num_examples, loss_sum

    update, flag, num_examples, loss_sum = train(weights.trainable, weights.non_trainable,
                                                 dataset)
    result = tff.learning.templates.ClientResult(update=(update, flag), update_weight=1.0)
    stats = collections.OrderedDict(num_examples=num_examples, loss_sum=loss_sum,
                                    num_malicious=flag)
    return result, stats

  @tff.federated_computation()
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(weights_type, tff.CLIENTS),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, weights, data):
    outputs = tff.federated_map(client_update, (weights, data))
    stats = tff.federated_sum(outputs[1])
    return tff.templates.MeasuredProcessOutput(state, outputs[0], stats)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)


def flagged_dataset(x: np.ndarray, y: np.ndarray, malicious: bool) -> tf.data.Dataset:
  """Unbatched `(x, y, is_malicious)` examples for `build_client_work`."""
  flags = np.full(len(x), malicious, dtype=bool)
  return tf.data.Dataset.from_tensor_slices((x, y, flags))
