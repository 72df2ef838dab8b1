"""FLAME in TFF's FedAvg builders and in `build_flame_fed_avg` (the paper's model space)."""

import numpy as np
import pathlib
import pytest
import sys
import tensorflow as tf
import tensorflow_federated as tff

from oracles import flame_round_numpy
from tff_flame import FlameFactory
from tff_flame import learning


def _datasets(num_clients, poisoned=()):
  rng = np.random.default_rng(0)
  out = []
  for i in range(num_clients):
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    if i in poisoned:
      y = 1 - y
    out.append(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
  return out


def _model_fn():
  spec = _datasets(1)[0].element_spec
  keras_model = tf.keras.Sequential([tf.keras.layers.Input((3,)), tf.keras.layers.Dense(2)])
  return tff.learning.models.from_keras_model(
      keras_model, input_spec=spec,
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))


# build_flame_fed_avg's default (model space) against NumPy:
# test_build_flame_fed_avg_defaults_to_the_papers_model_space.
@pytest.mark.parametrize('builder', ['unweighted', 'weighted', 'update_space'])
def test_fed_avg_round(builder):
  optimizer = tff.learning.optimizers.build_sgdm(0.5)
  if builder == 'unweighted':
    process = tff.learning.algorithms.build_unweighted_fed_avg(
        _model_fn, optimizer, model_aggregator=FlameFactory())
  elif builder == 'weighted':
    process = tff.learning.algorithms.build_weighted_fed_avg(
        _model_fn, optimizer, model_aggregator=FlameFactory().as_weighted())
  else:
    process = learning.build_flame_fed_avg(_model_fn, optimizer,
                                           flame=FlameFactory(clustering_space=builder.removesuffix('_space')))
  state = process.initialize()
  before = process.get_model_weights(state).trainable
  out = process.next(state, _datasets(7))
  agg = out.metrics['aggregator']
  assert agg['num_clients'] == 7 and agg['num_admitted'] >= 4 and agg['fallback'] == 0
  after = process.get_model_weights(out.state).trainable
  assert not np.allclose(before[0], after[0])


D = 8


class _LinearLoss(tf.keras.losses.Loss):
  """loss = mean of the outputs x . w: its gradient is the mean input, so one SGD step with
  learning rate 1 on one example x moves the weights by exactly -x (delta_i = x)."""

  def call(self, y_true, y_pred):
    del y_true
    return y_pred


def _linear_model_fn():
  keras_model = tf.keras.Sequential(
      [tf.keras.layers.Input((D,)), tf.keras.layers.Dense(1, use_bias=False)])
  spec = (tf.TensorSpec([None, D], tf.float32), tf.TensorSpec([None, 1], tf.float32))
  return tff.learning.models.from_keras_model(keras_model, input_spec=spec, loss=_LinearLoss())


def _spaces_disagree_round():
  """A global model G far from the origin and 10 updates that the model-space cosine and the
  update-space distances cluster differently.

  6 updates lie along G (-14 .. 15 times its unit vector g): as models G - delta_i they all
  point along g (model-space cosine: one tight group), as updates they are spread over 29
  units. 4 updates are close together (4 p + noise, p orthogonal to g): tight as updates,
  but their models are turned 0.1 rad away from g.
  """
  rng = np.random.default_rng(0)
  g = rng.normal(size=D)
  g /= np.linalg.norm(g)
  p = rng.normal(size=D)
  p -= (p @ g) * g
  p /= np.linalg.norm(p)
  along = [r * g + 1e-3 * rng.normal(size=D) for r in (-14.0, -8.5, -3.2, 2.6, 9.1, 15.3)]
  apart = [4.0 * p + 0.02 * rng.normal(size=D) for _ in range(4)]
  return (40.0 * g).astype(np.float32), np.array(along + apart, np.float32)


def test_build_flame_fed_avg_defaults_to_the_papers_model_space():
  """The default FLAME admits what a NumPy model-space (cosine between G - delta_i) round
  admits, in a round where the update-space distances admit other clients."""
  global_model, targets = _spaces_disagree_round()
  # delta_i = G - (G - x_i), rounded in float32 as the client's SGD step is.
  deltas = global_model - (global_model - targets)
  expected, want = flame_round_numpy(deltas, reference=global_model)
  _, update_euclidean = flame_round_numpy(deltas)
  _, update_cosine = flame_round_numpy(deltas, distance='cosine')
  assert not np.array_equal(want['admitted'], update_euclidean['admitted'])
  assert not np.array_equal(want['admitted'], update_cosine['admitted'])

  process = learning.build_flame_fed_avg(_linear_model_fn, tff.learning.optimizers.build_sgdm(1.0))
  state = process.initialize()
  state = process.set_model_weights(state, tff.learning.models.ModelWeights(
      trainable=[global_model[:, None]], non_trainable=[]))
  datasets = [tf.data.Dataset.from_tensor_slices((x[None], np.zeros((1, 1), np.float32))).batch(1)
              for x in targets]
  out = process.next(state, datasets)
  m = out.metrics['aggregator']
  assert m['num_clients'] == 10 and m['num_admitted'] == want['num_admitted']
  # Rows reach the server in the gather's order: compare the admitted clients by their norms.
  norms = np.asarray(m['update_norms'])
  np.testing.assert_allclose(np.sort(norms), np.sort(want['update_norms']), rtol=1e-6)
  np.testing.assert_allclose(np.sort(norms[np.asarray(m['admitted']) == 1]),
                             np.sort(want['update_norms'][want['admitted'] == 1]), rtol=1e-6)
  assert m['clipping_bound'] == pytest.approx(want['clipping_bound'], rel=1e-6)
  assert m['noise_stddev'] == pytest.approx(0.001 * want['clipping_bound'], rel=1e-6)
  # The server's SGD (learning rate 1) applies the aggregate: G - aggregate, noise within 6 sigma.
  after = np.asarray(process.get_model_weights(out.state).trainable[0])[:, 0]
  np.testing.assert_allclose(global_model - after, expected,
                             atol=6 * m['noise_stddev'] + 1e-5)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
