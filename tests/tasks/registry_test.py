"""Tasks by name: each loader reads its own fields of the one task config."""

import pathlib
import sys

import pytest

from experiments import config as config_lib
from tasks import registry


def test_the_config_is_the_one_source_of_the_task_defaults():
  config = config_lib.TaskConfig(task='digits')
  task = registry.load_task(config, seed=0)
  assert task.name == 'digits' and len(task.client_data) == config.num_clients
  smaller = registry.load_task(config_lib.TaskConfig(task='digits', num_clients=7), seed=0)
  assert len(smaller.client_data) == 7
  assert registry.TASKS == config_lib.TASKS


def test_unknown_names_and_missing_paths_name_the_flag():
  with pytest.raises(ValueError, match='--task must be one of'):
    registry.load_task(config_lib.TaskConfig(task='cifar'), seed=0)
  with pytest.raises(ValueError, match='--task=nbaiot needs --nbaiot_path'):
    registry.load_task(config_lib.TaskConfig(task='nbaiot'), seed=0)
  with pytest.raises(ValueError, match='--nbaiot_path=/nowhere: no such'):
    registry.load_task(config_lib.TaskConfig(task='nbaiot', nbaiot_path='/nowhere'), seed=0)
  with pytest.raises(ValueError, match='--emnist_cache_dir'):
    registry.load_task(config_lib.TaskConfig(task='emnist'), seed=0)
  with pytest.raises(ValueError, match='--shakespeare_text'):
    registry.load_task(config_lib.TaskConfig(task='shakespeare'), seed=0)


def test_a_task_cannot_be_registered_twice():
  with pytest.raises(ValueError, match='registered twice'):
    registry.register('digits')(lambda config, seed: None)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
