"""Shared image pieces: Dirichlet partition and the 28x28 CNN (TFF's FedAvg CNN)."""

import numpy as np
import pathlib
import pytest
import sys

from tasks import images


def test_dirichlet_partition_reproducible_and_impossible():
  labels = np.repeat(np.arange(3), 20)
  a = images.dirichlet_partition(labels, 4, 0.5, np.random.default_rng(3))
  b = images.dirichlet_partition(labels, 4, 0.5, np.random.default_rng(3))
  assert all(np.array_equal(p, q) for p, q in zip(a, b))
  assert sorted(np.concatenate(a).tolist()) == list(range(60))
  with pytest.raises(ValueError, match='cannot give'):
    images.dirichlet_partition(labels, 20, 0.5, np.random.default_rng(0), min_examples=5)


def test_emnist_model_is_tff_fedavg_cnn():
  from tensorflow_federated.python.simulation.baselines.emnist import emnist_models
  for only_digits, classes in ((True, 10), (False, 62)):
    ours = images.create_emnist_cnn(classes)
    tff_model = emnist_models.create_original_fedavg_cnn_model(only_digits=only_digits)
    assert ours.count_params() == tff_model.count_params()
    assert [w.shape for w in ours.weights] == [w.shape for w in tff_model.weights]
  assert images.create_emnist_cnn(10).count_params() == 1_663_370


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
