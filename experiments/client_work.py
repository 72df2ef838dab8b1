"""The client work every client runs: local SGD, with an attack's hooks for malicious clients.

Every client sends `((G - W), is_malicious)`: the update in TFF's sign
convention with its ground-truth flag (the defenses measure TPR/TNR from it).
Malicious clients are flagged in their dataset (`flagged_dataset`), so benign
and malicious clients run one TFF computation.
"""

import collections
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from experiments.attacks import base


def task_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Sparse cross-entropy on logits; for [batch, time] labels padding (0) is masked."""
  losses = tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
  if y.shape.rank == 2:
    mask = tf.cast(tf.not_equal(y, 0), losses.dtype)
    return tf.reduce_sum(losses * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
  return tf.reduce_mean(losses)


def build_client_work(keras_model_fn: Callable[[], tf.keras.Model], element_spec,
                      learning_rate: float, attack: base.Attack
                      ) -> tff.learning.templates.ClientWorkProcess:
  """Local SGD for every client, with `attack`'s hooks for clients flagged malicious.

  For an attack that `sends_crafted_updates`, each client's data is
  `crafted_client_data(...)`: a client given a crafted update sends it (flagged
  malicious) in place of what it trained.

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
  sends_crafted = attack.sends_crafted_updates
  if sends_crafted:
    # (dataset, a one-element dataset of (crafted update, use it)): see
    # `crafted_client_data`. Client data must be sequences for TFF's client work.
    crafted_type = tff.SequenceType(tff.StructWithPythonType(
        [tff.StructWithPythonType(list(weights_type.trainable), tuple),
         tff.TensorType(np.bool_)], tuple))
    data_type = tff.StructWithPythonType([data_type, crafted_type], tuple)

  @tff.tensorflow.computation(weights_type, data_type)
  def client_update(weights, data):
    dataset = data[0] if sends_crafted else data
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
    if sends_crafted:
      crafted, use_crafted = data[1].reduce(
          (tuple(tf.zeros_like(u) for u in update), tf.constant(False)), lambda _, sent: sent)
      update = [tf.where(use_crafted, tf.cast(c, u.dtype), u) for c, u in zip(crafted, update)]
      flag = tf.maximum(flag, tf.cast(use_crafted, tf.int32))
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


def crafted_client_data(dataset: tf.data.Dataset, trainable_like: list,
                        crafted_update: Optional[list] = None) -> tuple:
  """A client's data for a crafted attack's client work: its dataset, and the update it
  sends instead of training (`crafted_update`, in TFF's sign G - W), or zeros and False."""
  if crafted_update is None:
    sent = (tuple(np.zeros(np.shape(w), np.float32) for w in trainable_like), False)
  else:
    sent = (tuple(np.asarray(u, np.float32) for u in crafted_update), True)
  return (dataset, tf.data.Dataset.from_tensors(sent))


def flagged_dataset(x: np.ndarray, y: np.ndarray, malicious: bool) -> tf.data.Dataset:
  """Unbatched `(x, y, is_malicious)` examples for `build_client_work`."""
  flags = np.full(len(x), malicious, dtype=bool)
  return tf.data.Dataset.from_tensor_slices((x, y, flags))
