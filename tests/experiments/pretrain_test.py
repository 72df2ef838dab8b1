"""Pretraining: the cache key, loading instead of training, the run starting from the checkpoint."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import loop
from experiments import pretrain
from tasks import digits

REPO = pathlib.Path(__file__).resolve().parents[2]
TASK_CONFIG = config_lib.TaskConfig(task='digits', num_clients=6)


@pytest.fixture(scope='module')
def task():
  return digits.load_digits_task(num_clients=6, dirichlet_alpha=0.5, seed=0)


def config(**kwargs):
  base = dict(defense='flame', attack='constrain_and_scale', rounds=1, clients_per_round=4,
              attack_start_round=1, client_epochs=1, seed=0, pretrain_rounds=2)
  base.update(kwargs)
  return config_lib.ExperimentConfig(**base)


def test_cache_key_changes_with_what_determines_the_model_and_nothing_else(tmp_path):
  path = lambda t, c: pretrain.cache_path(str(tmp_path), t, c)
  base = path(TASK_CONFIG, config())
  changes = [dict(seed=1), dict(clients_per_round=5), dict(client_epochs=2), dict(batch_size=7),
             dict(client_learning_rate=0.05), dict(server_learning_rate=0.5),
             dict(pretrain_rounds=3)]
  task_changes = [dict(num_clients=7), dict(dirichlet_alpha=0.1), dict(task='fashion_mnist')]
  keys = {base}
  for change in changes:
    keys.add(path(TASK_CONFIG, config(**change)))
  for change in task_changes:
    keys.add(path(dataclasses.replace(TASK_CONFIG, **change), config()))
  assert len(keys) == 1 + len(changes) + len(task_changes)
  same = [dict(defense='krum'), dict(attack='pgd'), dict(rounds=9), dict(malicious_fraction=0.1),
          dict(noise_lambda=0.5), dict(attack_start_round=4), dict(scale_factor=3.0),
          dict(clustering_space='update'), dict(data_poisoning_rate=0.9)]
  for change in same:
    assert path(TASK_CONFIG, config(**change)) == base, change
  # Another task's fields do not split a digits cache; the task's own do.
  for change in (dict(emnist_cache_dir='/x'), dict(nbaiot_path='/y'),
                 dict(fashion_mnist_dir='/z')):
    assert path(dataclasses.replace(TASK_CONFIG, **change), config()) == base, change
  fmnist = dataclasses.replace(TASK_CONFIG, task='fashion_mnist')
  assert path(fmnist, config()) != path(dataclasses.replace(fmnist, fashion_mnist_dir='/z'),
                                        config())
  assert pretrain.load_or_train(None, TASK_CONFIG, config(pretrain_rounds=0), str(tmp_path)) is None


def test_second_run_loads_and_the_experiment_starts_from_the_checkpoint(task, tmp_path,
                                                                       monkeypatch):
  calls = []
  real_train = pretrain.train

  def counting_train(*args, **kwargs):
    calls.append(1)
    return real_train(*args, **kwargs)

  monkeypatch.setattr(pretrain, 'train', counting_train)
  cache = str(tmp_path / 'cache')
  logs = []
  first = pretrain.load_or_train(task, TASK_CONFIG, config(), cache, log=logs.append)
  second = pretrain.load_or_train(task, TASK_CONFIG, config(defense='none', rounds=5), cache,
                                  log=logs.append)
  assert len(calls) == 1 and not first.loaded and second.loaded
  assert os.path.exists(first.path) and first.path == second.path
  for a, b in zip(first.weights.trainable, second.weights.trainable):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert second.main_accuracy == first.main_accuracy and 0 <= first.main_accuracy <= 1
  assert 'MA' in logs[-1] and 'loaded from' in logs[-1]
  # Pretraining moved the model away from the initial one.
  process = loop.build_process(task, config())
  initial = process.get_model_weights(process.initialize()).trainable
  assert not np.array_equal(np.asarray(initial[0]), second.weights.trainable[0])
  # A round with server learning rate 0 leaves the global model where it started: its MA/BA
  # after the round are those of the checkpoint.
  frozen = config(defense='none', attack='none', server_learning_rate=0.0)
  summary = loop.run_experiment(task, frozen, str(tmp_path / 'run'), log=lambda s: None,
                                pretrained=second)
  assert summary['final']['main_accuracy'] == pytest.approx(first.main_accuracy)
  assert summary['final']['backdoor_accuracy'] == pytest.approx(first.backdoor_accuracy)
  stored = json.loads((tmp_path / 'run' / 'summary.json').read_text())['pretrain']
  assert stored['main_accuracy'] == first.main_accuracy and stored['rounds'] == 2


def test_binary_logs_and_stores_the_pretrained_accuracy(tmp_path):
  cache, out = tmp_path / 'cache', tmp_path / 'run'
  args = [sys.executable, '-m', 'experiments.run', '--rounds=1', '--num_clients=6',
          '--clients_per_round=3', '--client_epochs=1', '--pretrain_rounds=1',
          f'--pretrain_cache_dir={cache}', f'--output_dir={out}']
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith('pretrained:')]
  assert line and 'MA' in line[0] and 'cached in' in line[0]
  summary = json.loads((out / 'summary.json').read_text())
  assert 0 <= summary['pretrain']['main_accuracy'] <= 1 and not summary['pretrain']['loaded']
  assert len(list(cache.glob('digits-r1-*.npz'))) == 1


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
