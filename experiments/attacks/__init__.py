"""Backdoor attacks by name (`--attack`); see `registry` and each attack's module.

Importing this package registers every attack: the listing order here is the
order of the flag's help and the docs' table.
"""

from experiments.attacks import classic  # pylint: disable=unused-import
from experiments.attacks import stay_small  # pylint: disable=unused-import
from experiments.attacks import neurotoxin  # pylint: disable=unused-import
from experiments.attacks import a3fl  # pylint: disable=unused-import
from experiments.attacks import three_d_fed  # pylint: disable=unused-import
from experiments.attacks import defense_in_the_loop  # pylint: disable=unused-import
from experiments.attacks.base import Attack
from experiments.attacks.registry import build_attack
from experiments.attacks.registry import names
from experiments.attacks.registry import spec

ATTACKS = names()

__all__ = ['ATTACKS', 'Attack', 'build_attack', 'spec']
