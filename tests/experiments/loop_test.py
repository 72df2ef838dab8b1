"""The experiment loop: attackers, DBA parts, per-round records that survive a crash."""

import dataclasses
import json
import pathlib
import sys

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import loop
from tasks import digits
from tasks import images


@pytest.fixture(scope='module')
def task():
  return digits.load_digits_task(num_clients=6, dirichlet_alpha=0.5, seed=0)


def config(**kwargs):
  base = dict(defense='flame', attack='constrain_and_scale', rounds=2, clients_per_round=6,
              malicious_fraction=0.34, attack_start_round=1, client_epochs=1, seed=0)
  base.update(kwargs)
  return config_lib.ExperimentConfig(**base)


def test_malicious_clients_are_fixed_by_seed():
  a = loop.malicious_clients(20, 0.3, seed=1)
  assert len(a) == 6 and len(set(a.tolist())) == 6
  np.testing.assert_array_equal(a, loop.malicious_clients(20, 0.3, seed=1))
  assert not np.array_equal(a, loop.malicious_clients(20, 0.3, seed=2))


def test_attack_window():
  c = config(attack_start_round=3, attack_rounds=2)
  assert [c.attacking(r) for r in range(1, 7)] == [False, False, True, True, False, False]
  assert not config(attack='none').attacking(5)


def test_dba_gives_each_attacker_one_trigger_part(task):
  c = config(attack='dba', data_poisoning_rate=1.0)
  malicious = [1, 3, 4]
  datasets = loop.round_datasets(task, [1, 3, 4, 5], malicious, 1, c)
  parts = task.info['trigger_parts']
  for k, (cid, ds) in enumerate(zip([1, 3, 4], datasets)):
    xs = np.concatenate([b[0].numpy() for b in ds])
    flags = np.concatenate([b[2].numpy() for b in ds])
    assert flags.all()
    expected = images.trigger_pixels(parts, k % len(parts))
    others = [p for i in range(len(parts)) if i != k % len(parts)
              for p in zip(*images.trigger_pixels(parts, i))]
    rows, cols = expected
    assert np.allclose(xs[:, rows, cols, 0], task.info['trigger_value'])
    clean = task.client_data[cid][0]
    untouched = [p for p in others if p not in set(zip(rows, cols))]
    for r, col in untouched:
      assert np.allclose(np.sort(xs[:, r, col, 0]), np.sort(clean[:, r, col, 0]))
  benign = np.concatenate([b[2].numpy() for b in datasets[3]])
  assert not benign.any()


def test_run_writes_every_round_and_the_summary(task, tmp_path):
  summary = loop.run_experiment(task, config(), str(tmp_path), log=lambda s: None)
  rows = [json.loads(l) for l in (tmp_path / 'rounds.jsonl').read_text().splitlines()]
  assert [r['round'] for r in rows] == [1, 2]
  for r in rows:
    assert 0 <= r['main_accuracy'] <= 1 and 0 <= r['backdoor_accuracy'] <= 1
    assert r['num_clients'] == 6 and r['num_malicious'] == 2
    assert r['tpr'] is None or 0 <= r['tpr'] <= 1
  assert summary['final'] == rows[-1]
  assert json.loads((tmp_path / 'summary.json').read_text())['malicious_clients'] == \
      summary['malicious_clients']
  assert (tmp_path / 'metrics.png').read_bytes()[:4] == b'\x89PNG'


def test_a_crash_keeps_the_finished_rounds_and_the_run_continues(task, tmp_path):
  calls = []

  def failing_backdoor_accuracy(model, trigger_values=None):
    calls.append(1)
    if len(calls) == 3:  # The initial model (round 0), round 1, then round 2 fails.
      raise RuntimeError('evaluation died')
    return task.backdoor_accuracy(model, trigger_values)

  broken = dataclasses.replace(task)
  object.__setattr__(broken, 'backdoor_accuracy', failing_backdoor_accuracy)
  c = config(attack='none', defense='none', rounds=3)
  with pytest.raises(RuntimeError, match='evaluation died'):
    loop.run_experiment(broken, c, str(tmp_path), log=lambda s: None)
  rows = (tmp_path / 'rounds.jsonl').read_text().splitlines()
  assert len(rows) == 1 and json.loads(rows[0])['round'] == 1
  lines = []
  summary = loop.run_experiment(task, c, str(tmp_path), log=lines.append)
  assert 'after round 1' in lines[0] and [l.split()[1] for l in lines[1:]] == ['2/3', '3/3']
  rows = [json.loads(l) for l in (tmp_path / 'rounds.jsonl').read_text().splitlines()]
  assert [r['round'] for r in rows] == [1, 2, 3] and summary['final'] == rows[-1]
  csv_rounds = [l.split(',')[0] for l in (tmp_path / 'metrics.csv').read_text().splitlines()]
  assert csv_rounds == ['round', '1', '2', '3']
  assert list((tmp_path / 'tensorboard').iterdir())


def test_an_output_dir_of_another_run_is_an_error_until_fresh(task, tmp_path):
  loop.run_experiment(task, config(rounds=1), str(tmp_path), log=lambda s: None)
  with pytest.raises(loop.OutputDirError, match=r'different seed.*--fresh.*--output_dir'):
    loop.run_experiment(task, config(rounds=1, seed=1), str(tmp_path), log=lambda s: None)
  summary = loop.run_experiment(task, config(rounds=1, seed=1), str(tmp_path),
                                log=lambda s: None, fresh=True)
  assert summary['config']['seed'] == 1
  other = tmp_path / 'old'
  other.mkdir()
  (other / 'rounds.jsonl').write_text('{"round": 1}\n')
  with pytest.raises(loop.OutputDirError, match='rounds.jsonl'):
    loop.run_experiment(task, config(rounds=1), str(other), log=lambda s: None)
  assert (other / 'rounds.jsonl').read_text() == '{"round": 1}\n'


def test_client_samples_depend_only_on_seed_and_round():
  sample = loop.client_sampler(20, config(clients_per_round=5))
  again = loop.client_sampler(20, config(clients_per_round=5))
  assert [again(r) for r in (3, 1, 2)] == [sample(r) for r in (3, 1, 2)]
  assert len(set(sample(1))) == 5 and sample(1) == sorted(sample(1))
  assert sample(1) != sample(2)
  assert loop.client_sampler(20, config(clients_per_round=5, seed=1))(1) != sample(1)


def test_bad_config_names_the_field(task):
  with pytest.raises(ValueError, match='--clients_per_round'):
    config(clients_per_round=50).validate(len(task.client_data))
  with pytest.raises(ValueError, match='--malicious_fraction'):
    config(malicious_fraction=1.5).validate(6)
  with pytest.raises(ValueError, match='--defense'):
    config(defense='krum9').validate(6)
  with pytest.raises(ValueError, match=r'--trim_fraction must be in \[0.0, 0.5\)'):
    config(trim_fraction=0.5).validate(6)


def test_the_initial_model_is_fixed_by_the_seed(task):
  weights = []
  for seed in (3, 3, 4):
    process = loop.build_process(task, config(seed=seed))
    weights.append(process.get_model_weights(process.initialize()).trainable)
  np.testing.assert_array_equal(weights[0][0], weights[1][0])
  assert not np.array_equal(weights[0][0], weights[2][0])


def test_foolsgold_runs_end_to_end_with_rates(task, tmp_path):
  summary = loop.run_experiment(task, config(defense='foolsgold', rounds=1), str(tmp_path),
                                log=lambda s: None)
  final = summary['final']
  assert final['num_clients'] == 6 and 0 <= final['num_admitted'] <= 6
  assert final['num_malicious'] == 2 and final['tpr'] is not None and final['tnr'] is not None


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
