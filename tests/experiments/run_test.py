"""The training binary: it ends its worker under every signal, resumes after a kill,
splits clients over executor services; bad flags and files stop it early."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tff_flame import tff_worker

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(args, timeout=600, env=None):
  # Pipes for stdout/stderr: a leftover worker holding them open would make this hang.
  env = dict(os.environ if env is None else env, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=env)


def test_main_job_ends_its_worker(tmp_path):
  before = set(tff_worker.orphaned_tff_worker_pids(cwd=REPO))
  out = _run(['-m', 'experiments.run', '--rounds=2', '--num_clients=6', '--clients_per_round=5',
              '--client_epochs=1', f'--output_dir={tmp_path}'])
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'round 2/2' in out.stdout and 'MA' in out.stdout and 'BA' in out.stdout
  # Only orphans count: other TFF programs on the machine may run workers of their own.
  assert set(tff_worker.orphaned_tff_worker_pids(cwd=REPO)) - before == set()
  rows = [json.loads(l) for l in (tmp_path / 'rounds.jsonl').read_text().splitlines()]
  assert [r['round'] for r in rows] == [1, 2]
  assert all(0.0 <= r['main_accuracy'] <= 1.0 and r['num_clients'] == 5 for r in rows)
  assert (tmp_path / 'summary.json').exists() and (tmp_path / 'metrics.png').stat().st_size > 0


def test_bad_flags_fail_before_training_and_name_the_flag(tmp_path):
  out_dir = tmp_path / 'never'
  out = _run(['-m', 'experiments.run', '--rounds=0', f'--output_dir={out_dir}'])
  assert out.returncode != 0 and '--rounds' in out.stderr
  out = _run(['-m', 'experiments.run', '--num_clients=4', '--clients_per_round=9',
              f'--output_dir={out_dir}'])
  assert out.returncode == 2 and 'clients_per_round' in out.stderr
  assert not out_dir.exists()


def test_bad_data_file_fails_before_training_and_names_the_file(tmp_path):
  data = tmp_path / 'nbaiot'
  data.mkdir()
  (data / 'benign_traffic.csv').write_text('a,b\n1,2\n')  # 2 columns, not 115
  (data / 'scan.csv').write_text('a,b\n1,2\n')
  out_dir = tmp_path / 'never'
  out = _run(['-m', 'experiments.run', '--task=nbaiot', f'--nbaiot_path={data}',
              f'--output_dir={out_dir}'])
  assert out.returncode == 2
  named = [line for line in out.stderr.splitlines() if line.startswith('error:')]
  assert named and '.csv' in named[0] and 'column' in named[0], out.stderr[-2000:]
  assert 'Traceback' not in out.stderr
  assert not out_dir.exists()
  out = _run(['-m', 'experiments.run', '--task=shakespeare', f'--shakespeare_text={tmp_path}/no.txt',
              f'--output_dir={out_dir}'])
  assert out.returncode == 2 and '--shakespeare_text' in out.stderr
  assert not out_dir.exists()


SMALL = ['--num_clients=6', '--clients_per_round=5', '--client_epochs=1',
         '--attack_start_round=2', '--malicious_fraction=0.34']


def _default_sigint():
  """In the child: SIGINT's default action, even when pytest itself runs with SIGINT ignored
  (started as `cmd &` or under nohup, the test would otherwise send a signal it ignores)."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args, **kwargs):
  """The binary in the background, from a new session (no job control, like `setsid`)."""
  return subprocess.Popen([sys.executable, '-m', 'experiments.run'] + args, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True,
                          preexec_fn=_default_sigint, **kwargs)


def _wait_for_line(process, prefix, timeout=300):
  """Reads the binary's output until a line starts with `prefix`; returns the lines read."""
  lines = []
  deadline = time.monotonic() + timeout
  for line in process.stdout:
    lines.append(line)
    if line.startswith(prefix) or time.monotonic() > deadline:
      break
  assert lines and lines[-1].startswith(prefix), ''.join(lines)[-3000:]
  return lines


def _final(out_dir):
  return json.loads((out_dir / 'summary.json').read_text())['final']


def test_kill_9_in_round_3_then_the_same_command_continues_to_the_same_result(tmp_path):
  whole = _run(['-m', 'experiments.run', '--rounds=5', *SMALL,
                f'--output_dir={tmp_path / "whole"}'])
  assert whole.returncode == 0, whole.stderr[-3000:]
  args = ['--rounds=5', *SMALL, f'--output_dir={tmp_path / "killed"}']
  process = _start(args)
  _wait_for_line(process, 'round 2/5')
  checkpoint = tmp_path / 'killed' / 'checkpoints' / 'program_state_2'
  deadline = time.monotonic() + 60
  while not checkpoint.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  workers = tff_worker.child_tff_worker_pids(process.pid)
  assert workers and process.poll() is None
  process.kill()  # SIGKILL, during round 3.
  process.wait()
  process.stdout.close()
  assert tff_worker.workers_gone(workers), 'the worker outlived its SIGKILLed binary'
  again = _run(['-m', 'experiments.run'] + args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'after round 2' in again.stdout and 'round 1/5' not in again.stdout
  rows = [json.loads(l) for l in (tmp_path / 'killed' / 'rounds.jsonl').read_text().splitlines()]
  assert [r['round'] for r in rows] == [1, 2, 3, 4, 5]
  whole_final, final = _final(tmp_path / 'whole'), _final(tmp_path / 'killed')
  assert (final['main_accuracy'], final['backdoor_accuracy']) == (
      whole_final['main_accuracy'], whole_final['backdoor_accuracy'])
  assert final == whole_final


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_from_a_shell_without_job_control_leaves_no_worker(tmp_path, sig):
  process = _start(['--rounds=100', *SMALL, f'--output_dir={tmp_path}'])
  _wait_for_line(process, 'round 1/100')
  workers = tff_worker.child_tff_worker_pids(process.pid)
  assert workers
  process.send_signal(sig)
  process.communicate(timeout=60)  # a hang guard, not a timing claim
  assert process.returncode != 0
  assert tff_worker.workers_gone(workers), f'the worker outlived {sig.name}'


def test_two_executor_services_give_the_single_process_result(tmp_path):
  """`--tff_workers` over two `experiments.worker` services == one in-process worker."""
  from experiments import config as config_lib  # pylint: disable=g-import-not-at-top
  from experiments import loop  # pylint: disable=g-import-not-at-top
  from tasks import registry  # pylint: disable=g-import-not-at-top
  flags = ['--rounds=3', *SMALL]
  task_config = config_lib.TaskConfig(num_clients=6)
  config = config_lib.ExperimentConfig(rounds=3, clients_per_round=5, client_epochs=1,
                                       attack_start_round=2, malicious_fraction=0.34)
  assert sorted(config_lib.to_flags(task_config, config)) == sorted(flags)
  single = loop.run_experiment(registry.load_task(task_config, seed=0), config,
                               str(tmp_path / 'single'), log=lambda s: None)
  ports = [tff_worker.free_port(), tff_worker.free_port()]
  services = [subprocess.Popen([sys.executable, '-m', 'experiments.worker', f'--port={p}'],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
              for p in ports]
  try:
    out = _run(['-m', 'experiments.run', *flags, f'--output_dir={tmp_path / "split"}',
                f'--tff_workers=localhost:{ports[0]},localhost:{ports[1]}'])
  finally:
    for service in services:
      service.kill()
      service.wait()
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(l) for l in (tmp_path / 'split' / 'rounds.jsonl').read_text().splitlines()]
  single_rows = [json.loads(l)
                 for l in (tmp_path / 'single' / 'rounds.jsonl').read_text().splitlines()]
  assert [r['num_admitted'] for r in rows] == [r['num_admitted'] for r in single_rows]
  final = _final(tmp_path / 'split')
  assert final['main_accuracy'] == single['final']['main_accuracy']
  assert final['backdoor_accuracy'] == single['final']['backdoor_accuracy']


def test_console_is_one_line_per_round_without_tf_noise(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  out = _run(['-m', 'experiments.run', '--rounds=2', *SMALL, f'--output_dir={tmp_path}'],
             env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = (out.stdout + out.stderr).strip().splitlines()
  assert [l.split()[0] for l in lines] == ['round', 'round', 'final:'], lines
  bad = _run(['-m', 'experiments.run', '--rounds=2', *SMALL, '--seed=1',
              f'--output_dir={tmp_path}'])
  assert bad.returncode == 2 and '--fresh' in bad.stderr and '--output_dir' in bad.stderr
  fresh = _run(['-m', 'experiments.run', '--rounds=1', *SMALL, '--seed=1', '--fresh',
                f'--output_dir={tmp_path}'])
  assert fresh.returncode == 0 and 'round 1/1' in fresh.stdout, fresh.stderr[-3000:]
  assert len((tmp_path / 'rounds.jsonl').read_text().splitlines()) == 1


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
