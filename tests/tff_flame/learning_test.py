"""FLAME in TFF's FedAvg builders and in `build_flame_fed_avg` (the paper's model space)."""

import numpy as np
import pathlib
import pytest
import sys
import tensorflow as tf
import tensorflow_federated as tff

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


@pytest.mark.parametrize('builder', ['unweighted', 'weighted', 'model_space'])
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
                                           flame=FlameFactory(clustering_space='model'))
  state = process.initialize()
  before = process.get_model_weights(state).trainable
  out = process.next(state, _datasets(7))
  agg = out.metrics['aggregator']
  assert agg['num_clients'] == 7 and agg['num_admitted'] >= 4 and agg['fallback'] == 0
  after = process.get_model_weights(out.state).trainable
  assert not np.allclose(before[0], after[0])


def test_build_flame_fed_avg_defaults_to_the_papers_model_space():
  process = learning.build_flame_fed_avg(_model_fn, tff.learning.optimizers.build_sgdm(0.5))
  out = process.next(process.initialize(), _datasets(5))
  assert out.metrics['aggregator']['num_clients'] == 5
  # The aggregator of a model-space process takes the global model at the server.
  assert len(process.next.type_signature.parameter) == 2


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
