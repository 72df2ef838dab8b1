"""Runs of the training binary for the grids: per-task flags and one subprocess per run."""

import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'

# Per-task settings (flags of experiments/run.py) sized for a 2-core machine.
TASK_FLAGS = {
    'digits': ['--num_clients=20', '--clients_per_round=10', '--rounds=15',
               '--attack_start_round=8'],
    'nbaiot': [f'--nbaiot_path={SHARED_DATA / "nbaiot_sample"}', '--nbaiot_clients_per_device=10',
               '--num_clients=10', '--clients_per_round=10', '--rounds=10',
               '--attack_start_round=5', '--noise_lambda=0.01'],
    # 12,000 training images over 50 clients (Dirichlet alpha 0.5), 5 clean pretraining
    # rounds (cached per seed, shared by the cells), then 10 rounds with attacks from
    # round 3; MA/BA on 3,000 test images. A cell takes 2-4 minutes with 2 at a time
    # (benchmarks/evaluation.py, docs/evaluation.md).
    'fashion_mnist': ['--num_clients=50', '--fashion_mnist_train_examples=12000',
                      '--fashion_mnist_test_examples=3000', '--client_epochs=1',
                      '--pretrain_rounds=5', '--rounds=10', '--attack_start_round=3'],
    # From scratch 12 rounds left the LSTM predicting one character (MA ~0.2) and BA at its
    # floor; 20 clean rounds (MA 0.288, BA 0.000; ~20 min once, cached) give a bigram-level
    # model, and attackers poisoning all their sequences without the anomaly term (alpha=1)
    # implant the phrase in 3 attack rounds. Measured (defense none, constrain_and_scale, the
    # phrase at random word starts, BA = whole 'dead' predicted): BA 0.00 / 0.88 / 1.00 after
    # rounds 1-3, final MA 0.294, 188 s on the loaded 2-core machine; after control phrases
    # 'dead' follows in 0-2.5% of sequences (benchmarks/text_backdoor_control.py).
    'shakespeare': [f'--shakespeare_text={SHARED_DATA / "tinyshakespeare.txt"}',
                    '--num_clients=10', '--clients_per_round=10', '--pretrain_rounds=20',
                    '--rounds=3', '--attack_start_round=1', '--client_epochs=1',
                    '--client_learning_rate=1.0', '--data_poisoning_rate=1.0', '--alpha=1.0'],
}


def run_training(out: pathlib.Path, run_flags: list) -> tuple:
  """`python -m experiments.run` with these flags, logging to out/log.txt; (seconds, exit code).

  A run cut short continues from its checkpoint when started again.
  """
  start = time.monotonic()
  with open(out / 'log.txt', 'a') as log:
    code = subprocess.run([sys.executable, '-m', 'experiments.run'] + run_flags, cwd=REPO,
                          stdout=log, stderr=subprocess.STDOUT).returncode
  return time.monotonic() - start, code
