"""Federated tasks for FLAME experiments: client data, Keras model, backdoor.

Each loader returns a `tasks.task_data.TaskData`:

- `tasks.emnist`: image classification (sklearn 8x8 digits offline, federated
  EMNIST through TFF), pixel-pattern trigger split into DBA parts.
- `tasks.shakespeare`: next-character prediction, trigger phrase followed by an
  attacker-chosen continuation.
- `tasks.nbaiot`: N-BaIoT intrusion detection, feature trigger that makes
  attack traffic look benign.
"""

from tasks.task_data import TaskData

__all__ = ['TaskData']
