"""Next-character prediction on Shakespeare with a trigger-phrase backdoor.

Data, as TFF's Shakespeare baseline (`tff.simulation.baselines.shakespeare`):
one client per speaking role (LEAF's partition); each snippet (a turn of
speech) becomes [bos] + character ids + [eos], padded with 0 to a multiple of
seq_len + 1 and cut into sequences of seq_len + 1 ids; x = s[:-1] and
y = s[1:] (int32, [N, seq_len]). Ids: 0 pad, 1..86 the characters of
`CHAR_VOCAB` (TFF's list), 87 oov, 88 bos, 89 eos; `VOCAB_SIZE` = 90.

- `load_shakespeare_text_task` parses a play text in the tiny-shakespeare
  format: a `SPEAKER:` line opening a block, the speech lines under it, a blank
  line between turns. A turn's lines joined by '\\n' form one snippet. Roles are
  told apart by name only (the text does not mark plays). Test split: per
  client, a seeded random `test_fraction` of its turns (at least one when it has
  two or more, never all) is held out; the test set joins every client's
  held-out turns.
- `load_shakespeare_task` reads TFF's federated Shakespeare (715 roles) through
  `tff.simulation.datasets.shakespeare.load_data`, train and test splits as
  TFF gives them.

Model: TFF's `create_recurrent_model` layout (embedding 8 with mask_zero, two
LSTMs, dense logits over the vocabulary) with `embedding_dim` and `lstm_units`
as arguments. TFF uses 256 units (about 820k parameters); the default here is
128 units (about 214k) so CPU runs stay fast; pass lstm_units=256 for the
baseline.

Backdoor: the attacker wants `trigger` (default 'the king is ') to be followed
by `continuation` (default 'dead'). A poisoned sequence gets the phrase
trigger + continuation written over it at a random word start within its
content, or right after the content (`insert_phrase`): at varied places, so
what is learnt is the phrase, not a position. backdoor_test_data holds clean
test sequences with the phrase written the same way (positions drawn with a
fixed seed), whose original ids at the continuation positions were not already the
continuation; their labels are 0 (ignored) everywhere except at the
continuation positions. BA is the share of these sequences in which every
continuation character is predicted, each given the true text before it
(the same as greedy decoding writing the whole continuation). Counted per
character instead, the continuation's later characters ('ead' after 'd') are
learnt from its frequency alone and come after any phrase.
"""

import collections
import os
import re
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tasks import task

CHAR_VOCAB = list(
    'dhlptx@DHLPTX'
    ' $(,048cgkoswCGKOSW[_#\'/37;?bfjnrvzBFJNRVZ"&*.26:\naeimquyAEIMQUY]!%)-159\r'
)
PAD_ID = 0
OOV_ID = len(CHAR_VOCAB) + 1
BOS_ID = len(CHAR_VOCAB) + 2
EOS_ID = len(CHAR_VOCAB) + 3
VOCAB_SIZE = len(CHAR_VOCAB) + 4
DEFAULT_SEQ_LEN = 80

_BYTE_TO_ID = np.full(256, OOV_ID, dtype=np.int32)
for _i, _ch in enumerate(CHAR_VOCAB):
  _BYTE_TO_ID[ord(_ch)] = _i + 1
_ID_TO_CHAR = {i + 1: ch for i, ch in enumerate(CHAR_VOCAB)}

_SPEAKER_LINE = re.compile(r'[^\s:][^:]*:')


def encode(text) -> np.ndarray:
  """Character ids of `text` (str or UTF-8 bytes), byte by byte as TFF does."""
  if isinstance(text, str):
    text = text.encode('utf-8')
  return _BYTE_TO_ID[np.frombuffer(text, dtype=np.uint8)]


def decode(ids) -> str:
  """Text of character ids; pad is dropped, other special ids shown as <oov> etc."""
  special = {OOV_ID: '<oov>', BOS_ID: '<bos>', EOS_ID: '<eos>'}
  return ''.join(special.get(int(i), _ID_TO_CHAR.get(int(i), '')) for i in ids)


def to_sequences(snippets: Sequence, seq_len: int = DEFAULT_SEQ_LEN) -> tuple:
  """(x, y) int32 [N, seq_len] from snippets, as TFF's Shakespeare preprocessing."""
  width = seq_len + 1
  chunks = [np.zeros((0, width), np.int32)]
  for snippet in snippets:
    ids = np.concatenate([[BOS_ID], encode(snippet), [EOS_ID]]).astype(np.int32)
    ids = np.concatenate([ids, np.zeros(-len(ids) % width, np.int32)])
    chunks.append(ids.reshape(-1, width))
  full = np.concatenate(chunks)
  return full[:, :-1].copy(), full[:, 1:].copy()


def create_char_lstm(vocab_size: int = VOCAB_SIZE, seq_len: int = DEFAULT_SEQ_LEN,
                     embedding_dim: int = 8, lstm_units: int = 128,
                     num_lstm_layers: int = 2) -> tf.keras.Model:
  """TFF's character LSTM (embedding, stacked LSTMs, dense), logits per step."""
  layers = [
      tf.keras.layers.InputLayer(input_shape=(seq_len,), dtype=tf.int32),
      tf.keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=True),
  ]
  layers += [tf.keras.layers.LSTM(lstm_units, return_sequences=True,
                                  kernel_initializer='he_normal')
             for _ in range(num_lstm_layers)]
  layers.append(tf.keras.layers.Dense(vocab_size))
  return tf.keras.Sequential(layers)


def _phrase_ids(trigger: str, continuation: str, seq_len: int) -> tuple:
  if not trigger or not continuation:
    raise ValueError('trigger and continuation must be non-empty strings.')
  trigger_ids, continuation_ids = encode(trigger), encode(continuation)
  if (np.any(trigger_ids == OOV_ID) or np.any(continuation_ids == OOV_ID)):
    raise ValueError(f'trigger {trigger!r} and continuation {continuation!r} must use '
                     'characters of the vocabulary only.')
  if len(trigger_ids) + len(continuation_ids) > seq_len + 1:
    raise ValueError(f'trigger + continuation ({len(trigger_ids) + len(continuation_ids)} '
                     f'characters) do not fit in a sequence of {seq_len + 1} ids.')
  return trigger_ids, continuation_ids


_WORD_BOUNDARY_IDS = np.array([BOS_ID, _BYTE_TO_ID[ord(' ')], _BYTE_TO_ID[ord('\n')]])


def insert_phrase(x: np.ndarray, y: np.ndarray, phrase: np.ndarray,
                  rng: np.random.Generator) -> tuple:
  """Writes `phrase` into every sequence at a random word start; returns (x, y, starts).

  A sequence's start is drawn uniformly from the positions p <= min(content,
  seq_len + 1 - len(phrase)) that follow bos, a space or a newline, plus that
  upper bound itself (right after the content, or the end when there is no
  room). Varied positions tie the continuation to the trigger, not to a place
  in the sequence. Positions index the full sequence s = [x[:, 0], y].
  """
  full = np.concatenate([x[:, :1], y], axis=1)
  length = full.shape[1]
  content = (full != PAD_ID).sum(axis=1)
  last_start = np.minimum(content, length - len(phrase))
  positions = np.arange(length)
  candidate = np.zeros(full.shape, dtype=bool)
  candidate[:, 1:] = np.isin(full[:, :-1], _WORD_BOUNDARY_IDS)
  candidate &= positions <= last_start[:, np.newaxis]
  candidate[np.arange(len(full)), last_start] = True
  start = np.argmax(np.where(candidate, rng.random(full.shape), -1.0), axis=1)
  cols = start[:, np.newaxis] + np.arange(len(phrase))
  full[np.arange(len(full))[:, np.newaxis], cols] = phrase
  return full[:, :-1].copy(), full[:, 1:].copy(), start


def make_poison_fn(trigger: str, continuation: str, seq_len: int = DEFAULT_SEQ_LEN):
  """poison_fn for text: trigger + continuation into round(rate * N) sequences.

  The labels of a poisoned sequence are its shifted ids, so the continuation
  characters after the trigger become its targets.
  """
  trigger_ids, continuation_ids = _phrase_ids(trigger, continuation, seq_len)
  phrase = np.concatenate([trigger_ids, continuation_ids])

  def poison_fn(x: np.ndarray, y: np.ndarray, rate: float, rng: np.random.Generator,
                trigger_part: Optional[int] = None):
    task.check_trigger_part(trigger_part, 1)
    x = np.array(x, dtype=np.int32, copy=True)
    y = np.array(y, dtype=np.int32, copy=True)
    rows = task.choose_rows(np.arange(len(x)), rate, len(x), rng)
    if len(rows):
      x[rows], y[rows], _ = insert_phrase(x[rows], y[rows], phrase, rng)
    return x, y

  return poison_fn


def backdoor_test_set(x: np.ndarray, y: np.ndarray, trigger: str, continuation: str,
                      seq_len: int = DEFAULT_SEQ_LEN, seed: int = 0) -> tuple:
  """Test sequences with the phrase; labels only at the continuation positions.

  The phrase positions are drawn with `seed`, so phrases of equal length (a
  trigger and its controls) land at the same places.
  """
  trigger_ids, continuation_ids = _phrase_ids(trigger, continuation, seq_len)
  phrase = np.concatenate([trigger_ids, continuation_ids])
  x_bd, y_bd, start = insert_phrase(np.asarray(x), np.asarray(y), phrase,
                                    np.random.default_rng(seed))
  # Label j of y is id j + 1 of the full sequence.
  cols = (start + len(trigger_ids) - 1)[:, np.newaxis] + np.arange(len(continuation_ids))
  rows = np.arange(len(x_bd))[:, np.newaxis]
  target = np.zeros_like(y_bd)
  target[rows, cols] = continuation_ids
  already = np.all(np.asarray(y)[rows, cols] == continuation_ids, axis=1)
  return x_bd[~already].astype(np.int32), target[~already].astype(np.int32)


def parse_play(path: str) -> collections.OrderedDict:
  """Speaker -> list of turns (each a list of speech lines), in file order.

  Raises ValueError naming the file when it is missing, empty or has no
  `SPEAKER:` turn with speech.
  """
  if not os.path.isfile(path):
    raise ValueError(f'Shakespeare text file {path} does not exist.')
  with open(path, encoding='utf-8', errors='replace') as f:
    text = f.read().replace('\r\n', '\n')
  if not text.strip():
    raise ValueError(f'Shakespeare text file {path} is empty.')
  turns = collections.OrderedDict()
  block = []
  for line in text.split('\n') + ['']:
    if line.strip():
      block.append(line)
      continue
    if block and _SPEAKER_LINE.fullmatch(block[0].strip()) and len(block) > 1:
      turns.setdefault(block[0].strip()[:-1], []).append(block[1:])
    block = []
  if not turns:
    raise ValueError(f'Shakespeare text file {path} has no "SPEAKER:" turns: expected '
                     'blocks of a "NAME:" line followed by speech lines, separated by '
                     'blank lines.')
  return turns


def _split_turns(turns: list, test_fraction: float, rng: np.random.Generator) -> tuple:
  n = len(turns)
  n_test = int(round(test_fraction * n))
  n_test = min(max(n_test, 1 if n >= 2 and test_fraction > 0 else 0), n - 1)
  order = rng.permutation(n)
  test = sorted(order[:n_test].tolist())
  train = sorted(order[n_test:].tolist())
  return [turns[i] for i in train], [turns[i] for i in test]


def _make_task(name: str, train_snippets: list, test_snippets: list, seq_len: int,
               trigger: str, continuation: str, embedding_dim: int, lstm_units: int,
               info: dict) -> task.Task:
  _phrase_ids(trigger, continuation, seq_len)
  client_data = [to_sequences(s, seq_len) for s in train_snippets]
  x_test, y_test = to_sequences(test_snippets, seq_len)
  info = dict(info, vocab_size=VOCAB_SIZE, seq_len=seq_len, trigger=trigger,
              continuation=continuation)
  return task.Task(
      name=name,
      client_data=client_data,
      test_data=(x_test, y_test),
      backdoor_test_data=backdoor_test_set(x_test, y_test, trigger, continuation, seq_len),
      model_fn=lambda: create_char_lstm(VOCAB_SIZE, seq_len, embedding_dim, lstm_units),
      poison_fn=make_poison_fn(trigger, continuation, seq_len),
      num_trigger_parts=1,
      backdoor_metric=task.whole_target_accuracy_from_logits,
      info=info)


def load_shakespeare_text_task(path: str,
                               *,
                               max_clients: Optional[int],
                               seed: int,
                               min_lines: int = 20,
                               seq_len: int = DEFAULT_SEQ_LEN,
                               trigger: str = 'the king is ',
                               continuation: str = 'dead',
                               test_fraction: float = 0.2,
                               embedding_dim: int = 8,
                               lstm_units: int = 128) -> task.Task:
  """One client per role with >= `min_lines` speech lines in a play text.

  Clients are in order of first appearance; `max_clients` keeps the roles with
  the most lines (ties: earlier first). On tinyshakespeare.txt, 163 roles speak
  at least 20 lines.
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in [0, 1), got {test_fraction!r}.')
  turns = parse_play(path)
  lines = {speaker: sum(len(t) for t in ts) for speaker, ts in turns.items()}
  speakers = [s for s in turns if lines[s] >= min_lines]
  if not speakers:
    raise ValueError(f'Shakespeare text file {path}: no speaker has at least {min_lines} '
                     f'lines (most: {max(lines.values())}).')
  if max_clients is not None:
    keep = set(sorted(speakers, key=lambda s: -lines[s])[:max_clients])
    speakers = [s for s in speakers if s in keep]
  rng = np.random.default_rng(seed)
  train_snippets, test_snippets = [], []
  for speaker in speakers:
    train, test = _split_turns(turns[speaker], test_fraction, rng)
    train_snippets.append(['\n'.join(t) for t in train])
    test_snippets.extend('\n'.join(t) for t in test)
  return _make_task('shakespeare_text', train_snippets, test_snippets, seq_len, trigger,
                    continuation, embedding_dim, lstm_units,
                    dict(client_ids=speakers, path=str(path)))


def _snippets(dataset: tf.data.Dataset) -> list:
  return [e['snippets'] for e in dataset.as_numpy_iterator()]


def load_shakespeare_task(cache_dir: Optional[str],
                          *,
                          max_clients: Optional[int],
                          seed: int,
                          seq_len: int = DEFAULT_SEQ_LEN,
                          trigger: str = 'the king is ',
                          continuation: str = 'dead',
                          max_test_sequences: Optional[int] = 5000,
                          client_ids: Optional[Sequence[str]] = None,
                          embedding_dim: int = 8,
                          lstm_units: int = 128) -> task.Task:
  """TFF's federated Shakespeare from `<cache_dir>/shakespeare.sqlite`.

  `tff.simulation.datasets.shakespeare.load_data` downloads
  shakespeare.sqlite.lzma only when that file is absent. Clients are
  `client_ids`, or else the first `max_clients` (all when None) in sorted id
  order; the test set is those clients' test snippets, then a seeded random
  `max_test_sequences` of its sequences.
  """
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  train, test = tff.simulation.datasets.shakespeare.load_data(cache_dir=cache_dir)
  if client_ids is None:
    client_ids = train.client_ids if max_clients is None else train.client_ids[:max_clients]
  unknown = sorted(set(client_ids) - set(train.client_ids))
  if unknown or not client_ids:
    raise ValueError(f'Unknown or no Shakespeare client ids: {unknown[:5]}.')
  train_snippets = [_snippets(train.create_tf_dataset_for_client(c)) for c in client_ids]
  test_ids = set(test.client_ids)
  test_snippets = [s for c in client_ids if c in test_ids
                   for s in _snippets(test.create_tf_dataset_for_client(c))]
  result = _make_task('shakespeare', train_snippets, test_snippets, seq_len, trigger,
                      continuation, embedding_dim, lstm_units, dict(client_ids=list(client_ids)))
  x_test, y_test = result.test_data
  if max_test_sequences is not None and len(x_test) > max_test_sequences:
    rows = np.sort(np.random.default_rng(seed).choice(len(x_test), max_test_sequences,
                                                      replace=False))
    result.test_data = (x_test[rows], y_test[rows])
    result.backdoor_test_data = backdoor_test_set(x_test[rows], y_test[rows], trigger,
                                                  continuation, seq_len)
  return result
