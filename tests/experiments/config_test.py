"""One source of hyperparameters: flags come from the config fields, and so does the docs' flag table."""

import dataclasses
import pathlib
import sys

import pytest
from absl import flags

from experiments import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


def _flag_values(argv=()):
  values = flags.FlagValues()
  config_lib.define_flags(values)
  values(['prog', *argv])
  return values


def test_every_field_is_a_flag_with_its_default():
  values = _flag_values()
  for cls in config_lib.CONFIG_CLASSES:
    for field in dataclasses.fields(cls):
      assert values[field.name].default == field.default, field.name
  assert config_lib.from_flags(config_lib.ExperimentConfig, values) == \
      config_lib.ExperimentConfig()


def test_flags_round_trip_into_configs():
  config = config_lib.ExperimentConfig(defense='krum', rounds=3, scale_factor=2.5,
                                       attack_rounds=4)
  task = config_lib.TaskConfig(task='nbaiot', nbaiot_path='/data/x')
  values = _flag_values(config_lib.to_flags(config, task))
  assert config_lib.from_flags(config_lib.ExperimentConfig, values) == config
  assert config_lib.from_flags(config_lib.TaskConfig, values) == task


def test_validation_names_the_flag():
  cases = [(dict(rounds=0), '--rounds'), (dict(defense='bulyan'), '--defense'),
           (dict(attack='flip'), '--attack'), (dict(alpha=1.5), '--alpha'),
           (dict(trim_fraction=0.5), '--trim_fraction'), (dict(norm_bound=0.0), '--norm_bound'),
           (dict(clustering_space='weights'), '--clustering_space')]
  for kwargs, flag in cases:
    with pytest.raises(ValueError, match=flag):
      config_lib.ExperimentConfig(**kwargs).validate(num_clients=20)
  config_lib.ExperimentConfig().validate(num_clients=20)
  with pytest.raises(ValueError, match='--task'):
    config_lib.TaskConfig(task='cifar').validate()


def test_the_docs_tables_are_generated_from_the_config_and_the_registries():
  page = (REPO / 'docs' / 'experiments.md').read_text()
  for make in config_lib.GENERATED_TABLES:
    table = make()
    assert table in page, (f'a generated table of docs/experiments.md is out of date; '
                           'regenerate them with `python -m experiments.config '
                           f'docs/experiments.md`:\n{table}')
    header = table.split('\n')[0]
    assert page.count(header) == 1  # no second, stale table
    assert header not in (REPO / 'README.md').read_text()  # one place
  for name in config_lib.ATTACKS + config_lib.DEFENSES:
    assert f'| `{name}` |' in page


def test_writing_the_tables_replaces_them_in_place(tmp_path):
  page = tmp_path / 'page.md'
  stale = ['# title', '', '| flag | default | meaning |', '|---|---|---|',
           '| `--x` | 1 | STALE_ROW |',
           '', 'between', '', '| `--attack` | what the malicious clients do | what the attacker '
           'reads |', '|---|---|---|', '', '| `--defense` | what | reports TPR/TNR |', '', 'end']
  page.write_text('\n'.join(stale))
  config_lib.write_generated_tables(str(page))
  text = page.read_text()
  assert all(make() in text for make in config_lib.GENERATED_TABLES)
  assert 'STALE_ROW' not in text and text.startswith('# title') and text.endswith('end')
  assert 'between' in text


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
