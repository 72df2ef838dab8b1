"""3dfed: norm tuned to the benign reference, zero-sum masks, and an indicator that reads true."""

import pathlib
import sys

import numpy as np
import pytest

import attack_views
from experiments import config as config_lib
from experiments.attacks import crafted
from experiments.attacks import three_d_fed


def max_pairwise_cosine(vectors) -> float:
  unit = np.array([v / np.linalg.norm(v) for v in vectors])
  cos = unit @ unit.T
  np.fill_diagonal(cos, -1.0)
  return float(cos.max())


@pytest.fixture(scope='module')
def first_round():
  task = attack_views.digits_task()
  config = config_lib.ExperimentConfig(attack='3dfed')
  view = attack_views.view(task, config, weights=attack_views.trained_weights(task))
  attack = three_d_fed.ThreeDFed()
  updates = attack.craft(view)
  return task, config, view, attack, {c: crafted.flat(u) for c, u in updates.items()}


def test_masks_sum_to_zero_and_decorrelate(first_round):
  _, _, view, attack, updates = first_round
  planted = [i for i, _ in attack.indicators['planted']]
  # The same round without masks: rebuild it from the same draws.
  quiet = three_d_fed.ThreeDFed()
  quiet.knobs['noise_scale'] = 0.0
  replay = attack_views.view(attack_views.digits_task(), view.config,
                             weights=view.global_weights)
  plain = {c: crafted.flat(u) for c, u in quiet.craft(replay).items()}
  keep = np.ones_like(updates[0], bool)
  keep[planted] = False
  keep[quiet.indicators['read'][:len(plain)]] = False
  masks = np.array([updates[c] - plain[c] for c in updates])
  np.testing.assert_allclose(masks[:, keep].sum(axis=0), 0.0, atol=1e-5)
  assert np.abs(masks[:, keep]).max() > 0
  assert max_pairwise_cosine([updates[c] for c in updates]) < max_pairwise_cosine(
      [plain[c] for c in plain])


def test_norm_is_tuned_to_the_benign_reference(first_round):
  _, _, view, attack, updates = first_round
  for client_id, update in updates.items():
    benign = crafted.norm(attack_views.clean_update(view, client_id))
    # norm_target 1 x benign (another shuffle), then masks of 0.3 x the norm and the indicator.
    assert np.linalg.norm(update) == pytest.approx(benign * np.sqrt(1 + 0.3 ** 2 * 0.7),
                                                   rel=0.35)


def indicator_verdicts(attack, view, updates, admitted, clip=None):
  """The next round's reading when the server averaged `admitted` attackers with benign ones."""
  others = attack_views.view(attack_views.digits_task(), view.config,
                             weights=view.global_weights, attackers=(3, 4, 5))
  benign = [crafted.flat(attack_views.clean_update(others, c)) for c in (3, 4, 5)]
  clip = clip or {}
  rows = [updates[c] * clip.get(c, 1.0) for c in admitted] + benign
  new_global = crafted.flat(view.global_weights) - np.mean(rows, axis=0)
  reader = three_d_fed.ThreeDFed()
  reader.restore(attack.state())
  reader._read_verdicts(new_global)  # pylint: disable=protected-access
  return reader.verdicts, reader.knobs


def test_the_indicator_tells_accepted_clipped_and_rejected(first_round):
  _, _, view, attack, updates = first_round
  order = list(updates)
  verdicts, knobs = indicator_verdicts(attack, view, updates, admitted=order)
  assert verdicts == ['accepted'] * 3 and knobs['norm_target'] == 1.0
  verdicts, knobs = indicator_verdicts(attack, view, updates, admitted=order[:2],
                                       clip={order[1]: 0.3})
  assert verdicts == ['accepted', 'clipped', 'rejected']
  assert knobs['norm_target'] == pytest.approx(0.8) and knobs['noise_scale'] == pytest.approx(0.45)
  # A plain data-poisoning client plants nothing: at the same coordinate its update reads as
  # rejected even when the server admitted it.
  poisoning = crafted.flat(attack_views.data_poisoning_update(view, order[0]))
  dp = dict(updates)
  dp[order[0]] = poisoning
  assert indicator_verdicts(attack, view, dp, admitted=order)[0][0] == 'rejected'


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[2]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
