"""Benign and malicious client training as one TFF client work process.

Each client dataset yields `(x, y, is_malicious)` batches; the flag (the same
for every example of a client) is read inside TFF, so benign and malicious
clients run the same computation in the same runtime as the defense. What the
attacker does beyond training on its (already poisoned) data:

- `data_poisoning`, `dba`: nothing (DBA differs only in the trigger part each
  malicious client puts in its data, see `experiment.round_datasets`).
- `constrain_and_scale` (Bagdasaryan et al. 2020): loss = alpha * task loss +
  (1 - alpha) * ||W - G||^2, then the update is scaled by gamma (model
  replacement: gamma = n / eta).
- `pgd` (Sun et al. 2019; Wang et al. 2020): after every step the model is
  projected back onto the L2 ball of radius `pgd_radius` around G.

Every client sends `((G - W), is_malicious)`: the update in TFF's sign
convention with its ground-truth flag, for exact TPR/TNR at the defense.
"""

import collections
import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

ATTACKS = ('none', 'data_poisoning', 'constrain_and_scale', 'pgd', 'dba')


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """What malicious clients do; see the module docstring."""
  kind: str = 'none'
  alpha: float = 0.7
  scale_factor: float = 1.0
  pgd_radius: float = 1.0

  def __post_init__(self):
    if self.kind not in ATTACKS:
      raise ValueError(f'attack must be one of {ATTACKS}, got {self.kind!r}.')
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f'alpha must be in [0, 1], got {self.alpha}.')
    if not self.scale_factor > 0:
      raise ValueError(f'scale_factor must be > 0, got {self.scale_factor}.')
    if not self.pgd_radius > 0:
      raise ValueError(f'pgd_radius must be > 0, got {self.pgd_radius}.')


def squared_distance(variables, reference) -> tf.Tensor:
  """sum_k ||v_k - r_k||^2 over a list of tensors: the anomaly loss."""
  return tf.add_n([tf.reduce_sum(tf.square(v - r)) for v, r in zip(variables, reference)])


def project_to_ball(variables, reference, radius: float) -> list:
  """reference + (v - reference) * min(1, radius / ||v - reference||), over all tensors."""
  norm = tf.sqrt(squared_distance(variables, reference))
  scale = tf.minimum(1.0, radius / tf.maximum(norm, 1e-12))
  return [r + (v - r) * scale for v, r in zip(variables, reference)]


def task_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Sparse cross-entropy on logits; for [batch, time] labels padding (0) is masked."""
  losses = tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
  if y.shape.rank == 2:
    mask = tf.cast(tf.not_equal(y, 0), losses.dtype)
    return tf.reduce_sum(losses * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
  return tf.reduce_mean(losses)


def build_client_work(keras_model_fn: Callable[[], tf.keras.Model], element_spec,
                      learning_rate: float, attack: AttackConfig
                      ) -> tff.learning.templates.ClientWorkProcess:
  """Local SGD for every client, plus `attack` for clients flagged malicious.

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
      constrain = malicious & (attack.kind == 'constrain_and_scale')
      alpha = tf.where(constrain, attack.alpha, 1.0)
      num_examples = tf.constant(0, tf.int32)
      loss_sum = tf.constant(0.0, tf.float32)
      for x, y, _ in dataset:
        with tf.GradientTape() as tape:
          loss = task_loss(y, model(x, training=True))
          total = loss
          if attack.kind == 'constrain_and_scale':
            total = alpha * loss + (1.0 - alpha) * squared_distance(
                model.trainable_variables, initial_trainable)
        grads = tape.gradient(total, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
          if g is not None:  # Embedding gradients arrive as IndexedSlices.
            v.assign_sub(learning_rate * tf.convert_to_tensor(g))
        if attack.kind == 'pgd':
          projected = project_to_ball(model.trainable_variables, initial_trainable,
                                      attack.pgd_radius)
          for v, p in zip(model.trainable_variables, projected):
            v.assign(tf.where(malicious, p, v))
        num_examples += tf.shape(x)[0]
        loss_sum += loss * tf.cast(tf.shape(x)[0], tf.float32)
      scale = tf.where(constrain, attack.scale_factor, 1.0)
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


def model_replacement_scale(clients_per_round: int, server_learning_rate: float,
                            attackers_per_round: float = 1.0) -> float:
  """gamma = n / (eta * k): k attackers together replace the global model after averaging.

  Bagdasaryan et al. derive gamma = n / eta for one attacker; with k attackers
  in a round each scaling by n / eta the replacement would overshoot k-fold.
  """
  return float(clients_per_round) / (float(server_learning_rate) * max(1.0, attackers_per_round))


def flagged_dataset(x: np.ndarray, y: np.ndarray, malicious: bool) -> tf.data.Dataset:
  """Unbatched `(x, y, is_malicious)` examples for `build_client_work`."""
  flags = np.full(len(x), malicious, dtype=bool)
  return tf.data.Dataset.from_tensor_slices((x, y, flags))
