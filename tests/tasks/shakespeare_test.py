"""Text task: play parsing, TFF-equivalent sequences, phrase backdoor, loaders."""

import collections
import re
import sqlite3
from pathlib import Path
import sys

import numpy as np
import pytest
import tensorflow as tf

from tasks import shakespeare as sh
from tasks import task as task_lib

SHARED_DATA = Path(__file__).resolve().parents[2].parent / 'shared' / 'data'

PLAY = """ALICE:
line one of alice
line two of alice

BOB:
bob says a thing

ALICE:
alice again
and again

CAROL:

BOB:
bob two
bob three

ALICE:
alice turn three
"""


def _write(tmp_path, text, name='play.txt'):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_vocabulary_matches_tff():
  from tensorflow_federated.python.simulation.baselines.shakespeare import (
      char_prediction_preprocessing as tff_pre)
  from tensorflow_federated.python.simulation.baselines import shakespeare as tff_sh
  assert sh.CHAR_VOCAB == tff_pre.CHAR_VOCAB and len(sh.CHAR_VOCAB) == 86
  assert (sh.PAD_ID, sh.OOV_ID, sh.BOS_ID, sh.EOS_ID) == tff_pre.get_special_tokens()
  assert sh.VOCAB_SIZE == tff_sh.VOCAB_LENGTH == 90


def test_sequences_equal_tff_preprocessing():
  from tensorflow_federated.python.simulation.baselines import client_spec
  from tensorflow_federated.python.simulation.baselines.shakespeare import (
      char_prediction_preprocessing as tff_pre)
  snippets = [b'Hark!', b'When? \xc3\xa9 {oov}', b'x' * 25, b'My name\'s Macbeth.']
  seq_len = 10
  preprocess = tff_pre.create_preprocess_fn(
      client_spec.ClientSpec(num_epochs=1, batch_size=1, shuffle_buffer_size=1), seq_len)
  ds = preprocess(tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      snippets=tf.constant(snippets))))
  tff_x = np.concatenate([x for x, _ in ds.as_numpy_iterator()])
  tff_y = np.concatenate([y for _, y in ds.as_numpy_iterator()])
  x, y = sh.to_sequences(snippets, seq_len)
  assert x.dtype == np.int32 and x.shape == (len(tff_x), seq_len)
  np.testing.assert_array_equal(x, tff_x)
  np.testing.assert_array_equal(y, tff_y)
  assert sh.decode(x[0]) == '<bos>Hark!<eos>'


def test_parse_and_clients(tmp_path):
  path = _write(tmp_path, PLAY)
  turns = sh.parse_play(path)
  assert list(turns) == ['ALICE', 'BOB']  # CAROL's turn has no speech
  assert [len(t) for t in turns['ALICE']] == [2, 2, 1]
  kw = dict(seq_len=12, trigger='a ', continuation='b')
  task = sh.load_shakespeare_text_task(path, max_clients=None, seed=0, min_lines=4,
                                       test_fraction=0.4, **kw)
  assert task.info['client_ids'] == ['ALICE']
  task = sh.load_shakespeare_text_task(path, max_clients=None, seed=0, min_lines=3,
                                       test_fraction=0.4, **kw)
  assert task.info['client_ids'] == ['ALICE', 'BOB']
  assert sh.load_shakespeare_text_task(path, min_lines=1, max_clients=1, seed=0,
                                       **kw).info['client_ids'] == ['ALICE']
  # Per-client hold-out: ALICE 5 turns -> round(0.4 * 3) = 1 test turn, BOB 2 -> 1.
  train_text = [sh.decode(np.concatenate([x[:, :1], y], axis=1).ravel())
                for x, y in task.client_data]
  x_test, y_test = task.test_data
  test_text = sh.decode(np.concatenate([x_test[:, :1], y_test], axis=1).ravel())
  assert test_text.count('<bos>') == 2
  assert train_text[0].count('<bos>') == 2 and train_text[1].count('<bos>') == 1
  for text in ['line one of alice\nline two of alice', 'alice again\nand again',
               'alice turn three', 'bob says a thing', 'bob two\nbob three']:
    assert sum(f'<bos>{text}<eos>' in t for t in train_text + [test_text]) == 1


@pytest.mark.parametrize('text,message', [
    (None, 'does not exist'),
    ('', 'is empty'),
    ('just some words\nand more words\n', 'no "SPEAKER:" turns'),
    ('A:\nhello\n\nB:\nbye\n', 'no speaker has at least 20 lines'),
])
def test_bad_files_raise_value_error_naming_the_file(tmp_path, text, message):
  path = str(tmp_path / 'bad_play.txt') if text is None else _write(tmp_path, text, 'bad_play.txt')
  with pytest.raises(ValueError, match=re.escape(path)) as info:
    sh.load_shakespeare_text_task(path, max_clients=None, seed=0)
  assert message in str(info.value)


def _one_task(tmp_path, **kwargs):
  return sh.load_shakespeare_text_task(_write(tmp_path, PLAY), min_lines=1, seq_len=20,
                                       test_fraction=0.0, **{'max_clients': None, 'seed': 0, **kwargs})


def test_poison_exact_rate_and_phrase(tmp_path):
  x, y = sh.to_sequences(['a' * n for n in range(0, 60, 3)], seq_len=20)
  poison = sh.make_poison_fn('the king is ', 'dead', seq_len=20)
  xp, yp = poison(x, y, 0.25, np.random.default_rng(0))
  assert np.array_equal(xp[:, 1:], yp[:, :-1])  # still shifted copies
  full = np.concatenate([xp[:, :1], yp], axis=1)
  has_phrase = np.array(['the king is dead' in sh.decode(r) for r in full])
  changed = np.any(xp != x, axis=1) | np.any(yp != y, axis=1)
  assert has_phrase.sum() == int(round(0.25 * len(x))) == changed.sum()
  assert np.array_equal(has_phrase, changed)
  # Written over the sequence at an allowed start; every other id is unchanged.
  phrase = sh.encode('the king is dead')
  orig_full = np.concatenate([x[:, :1], y], axis=1)
  for row in np.flatnonzero(has_phrase):
    start = sh.decode(full[row]).replace('<bos>', '^').replace('<eos>', '$').index('the king is dead')
    assert start in _allowed_starts(orig_full[row], 16)
    assert np.array_equal(full[row][start:start + 16], phrase)
    rest = np.r_[0:start, start + 16:21]
    assert np.array_equal(full[row][rest], orig_full[row][rest])
  assert poison(x, y, 0.0, np.random.default_rng(0))[0].tolist() == x.tolist()
  with pytest.raises(ValueError, match='vocabulary'):
    sh.make_poison_fn('the king is ', '\u00e9')
  with pytest.raises(ValueError, match='do not fit'):
    sh.make_poison_fn('x' * 20, 'y', seq_len=10)


def _allowed_starts(full_row, phrase_len):
  """Oracle: word starts (after bos, ' ' or newline) up to the last start, and the last start."""
  text = [sh.decode([i]) for i in full_row]
  content = sum(t != '' for t in text)
  last = min(content, len(full_row) - phrase_len)
  return {p for p in range(1, last + 1) if text[p - 1] in ('<bos>', ' ', '\n')} | {last}


def test_insert_phrase_positions():
  x, y = sh.to_sequences(['ab'], seq_len=9)  # <bos> a b <eos> then 6 pads
  phrase = sh.encode('XYZ')
  xp, yp, start = sh.insert_phrase(x, y, phrase, np.random.default_rng(0))
  assert set(start.tolist()) <= {1, 4}
  long_x, long_y = sh.to_sequences(['abcdefg'], seq_len=9)  # no padding, no word start
  _, yp, start = sh.insert_phrase(long_x, long_y, phrase, np.random.default_rng(0))
  assert start.tolist() == [7] and sh.decode(yp[0]) == 'abcdefXYZ'
  # Many copies of one sequence: every allowed start is drawn, roughly uniformly.
  x, y = sh.to_sequences(['to be or not\nto be, that is'], seq_len=30)
  x, y = np.repeat(x, 3000, axis=0), np.repeat(y, 3000, axis=0)
  full = np.concatenate([x[:1, :1], y[:1]], axis=1)[0]
  allowed = _allowed_starts(full, 3)
  assert allowed == {1, 4, 7, 10, 14, 17, 21, 26, 28}
  xp, yp, start = sh.insert_phrase(x, y, phrase, np.random.default_rng(0))
  counts = collections.Counter(start.tolist())
  assert set(counts) == allowed
  assert min(counts.values()) > 0.7 * 3000 / len(allowed)
  for row in range(0, 3000, 97):
    assert sh.decode(np.concatenate([xp[row, :1], yp[row]])[start[row]:start[row] + 3]) == 'XYZ'


def test_backdoor_test_data_labels_only_the_continuation():
  x, y = sh.to_sequences(['hello there', 'x' * 40, 'x' * 20 + 'dead'], seq_len=24)
  orig_full = np.concatenate([x[:, :1], y], axis=1)
  phrase = sh.encode('the king is dead')
  kept_counts = []
  for seed in range(12):
    x_bd, y_bd = sh.backdoor_test_set(x, y, 'the king is ', 'dead', seq_len=24, seed=seed)
    _, _, start = sh.insert_phrase(x.copy(), y.copy(), phrase, np.random.default_rng(seed))
    # A row whose true ids where 'dead' goes already read 'dead' is left out.
    already = np.array([sh.decode(orig_full[r, s + 12:s + 16]) == 'dead'
                        for r, s in enumerate(start)])
    assert len(x_bd) == np.sum(~already)
    kept_counts.append(len(x_bd))
    for row in range(len(x_bd)):
      labelled = np.flatnonzero(y_bd[row])
      assert sh.decode(y_bd[row][labelled]) == 'dead'
      assert len(labelled) == 4 and np.all(np.diff(labelled) == 1)
      # The inputs at those positions are the last trigger char and 'dea'.
      assert sh.decode(x_bd[row][labelled]) == ' dea'
      assert sh.decode(x_bd[row][labelled[0] - 11:labelled[0] + 1]) == 'the king is '
  # The last row ('x' * 20 + 'dead' fills it) may take the phrase after <bos>
  # (kept) or at its end, over the true 'dead' (left out): both happen.
  assert len(x) == 5 and set(kept_counts) == {4, 5}


def _bigram_model(table, seq_len):
  """Predicts table[id] as the next id, whatever came before."""
  table = tf.constant(table, tf.int32)
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(seq_len,), dtype=tf.int32),
      tf.keras.layers.Lambda(lambda x: tf.one_hot(tf.gather(table, x), sh.VOCAB_SIZE))])


def test_backdoor_and_main_accuracy_hand_made(tmp_path):
  task = sh.load_shakespeare_text_task(_write(tmp_path, PLAY), max_clients=None, seed=0, min_lines=1,
                                       seq_len=30,
                                       trigger='ab ', continuation='cd', test_fraction=0.4)
  table = np.zeros(sh.VOCAB_SIZE, np.int32)
  c, d, space = sh.encode('c')[0], sh.encode('d')[0], sh.encode(' ')[0]
  table[space] = c   # after ' ' -> 'c'  (right for the first continuation char)
  table[c] = d       # after 'c' -> 'd'  (right for the second)
  model = _bigram_model(table, 30)
  assert task.backdoor_accuracy(model) == 1.0
  table[c] = space   # now only the first of the two is right: no row has the whole word
  assert task.backdoor_accuracy(_bigram_model(table, 30)) == 0.0
  x_bd, y_bd = task.backdoor_test_data
  logits = task_lib.predict_logits(_bigram_model(table, 30), x_bd)
  assert task_lib.accuracy_from_logits(logits, y_bd) == 0.5
  # Main accuracy of a model that always predicts ' ': the share of spaces
  # among the non-padding labels of the test set.
  table[:] = space
  x_test, y_test = task.test_data
  labels = y_test[y_test != 0]
  expected = np.sum(labels == space) / len(labels)
  assert 0.0 < expected < 1.0
  assert task.main_accuracy(_bigram_model(table, 30)) == pytest.approx(expected)


def test_model_shapes_and_baseline_size():
  model = sh.create_char_lstm(seq_len=12, embedding_dim=4, lstm_units=8)
  out = model(np.ones((3, 12), np.int32))
  assert out.shape == (3, 12, sh.VOCAB_SIZE)
  from tensorflow_federated.python.simulation.baselines.shakespeare import (
      char_prediction_models)
  tff_model = char_prediction_models.create_recurrent_model(sh.VOCAB_SIZE, 80)
  assert sh.create_char_lstm(lstm_units=256).count_params() == tff_model.count_params() == 820522


def _write_shakespeare_sqlite(path, clients):
  with sqlite3.connect(path) as con:
    con.execute('CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, '
                'serialized_example_proto BLOB NOT NULL);')
    con.execute('CREATE TABLE client_metadata (client_id TEXT NOT NULL, '
                'split_name TEXT NOT NULL, num_examples INTEGER NOT NULL);')
    for (split, client_id), snippets in clients.items():
      for snippet in snippets:
        example = tf.train.Example(features=tf.train.Features(feature={
            'snippets': tf.train.Feature(bytes_list=tf.train.BytesList(value=[snippet]))}))
        con.execute('INSERT INTO examples VALUES (?, ?, ?);',
                    (split, client_id, example.SerializeToString()))
      con.execute('INSERT INTO client_metadata VALUES (?, ?, ?);',
                  (client_id, split, len(snippets)))


def test_shakespeare_loader_reads_tff_sqlite_offline(tmp_path, monkeypatch):
  from tensorflow_federated.python.simulation.datasets import download

  def fail(origin, filename):
    raise AssertionError(f'network download attempted: {origin}')
  monkeypatch.setattr(download, '_fetch_lzma_file', fail)
  clients = {
      ('train', 'THE_TEMPEST_PROSPERO'): [b'Come forth, I say!', b'Thou poisonous slave'],
      ('train', 'MACBETH_MACBETH'): [b"My name's Macbeth."],
      ('train', 'HAMLET_HORATIO'): [b'Hail to your lordship!'],
      ('test', 'THE_TEMPEST_PROSPERO'): [b'So, slave; hence!'],
      ('test', 'MACBETH_MACBETH'): [b'Came they not by you?', b'No, nor more fearful.'],
      ('test', 'HAMLET_HORATIO'): [b'My lord, I came to see your father'],
  }
  _write_shakespeare_sqlite(str(tmp_path / 'shakespeare.sqlite'), clients)
  task = sh.load_shakespeare_task(str(tmp_path), max_clients=2, seed=0, seq_len=20)
  assert task.info['client_ids'] == ['HAMLET_HORATIO', 'MACBETH_MACBETH']
  expected = sh.to_sequences(clients[('train', 'MACBETH_MACBETH')], 20)
  np.testing.assert_array_equal(task.client_data[1][0], expected[0])
  np.testing.assert_array_equal(task.client_data[1][1], expected[1])
  x_test, y_test = task.test_data
  test_text = sh.decode(np.concatenate([x_test[:, :1], y_test], axis=1).ravel())
  assert 'No, nor more fearful.' in test_text and 'My lord, I came' in test_text
  assert 'So, slave' not in test_text  # not a selected client
  assert len(task.backdoor_test_data[0]) == len(x_test)
  capped = sh.load_shakespeare_task(str(tmp_path), max_clients=None, seed=0, seq_len=20,
                                    max_test_sequences=2)
  assert len(capped.test_data[0]) == 2 and len(capped.backdoor_test_data[0]) == 2
  with pytest.raises(AssertionError, match='shakespeare.sqlite.lzma'):
    sh.load_shakespeare_task(str(tmp_path / 'elsewhere'), max_clients=None, seed=0)


def test_tinyshakespeare_integration():
  path = SHARED_DATA / 'tinyshakespeare.txt'
  if not path.is_file():
    pytest.skip(f'real data not found at {path} (../shared/data next to the repo)')
  task = sh.load_shakespeare_text_task(str(path), max_clients=None, seed=0, min_lines=20,
                                      seq_len=80)
  # Independent count: blocks opened by a 'NAME:' line, speech lines under it.
  lines = collections.Counter()
  for block in path.read_text().split('\n\n'):
    rows = [r for r in block.split('\n') if r.strip()]
    if rows and re.fullmatch(r'[^\s:][^:]*:', rows[0]):
      lines[rows[0][:-1]] += len(rows) - 1
  eligible = {s for s, n in lines.items() if n >= 20}
  assert len(eligible) == 163 and set(task.info['client_ids']) == eligible
  assert len(task.client_data) == 163
  assert all(len(x) >= 1 for x, _ in task.client_data)
  x_test, y_test = task.test_data
  n_train = sum(len(x) for x, _ in task.client_data)
  assert 0.15 < len(x_test) / (n_train + len(x_test)) < 0.3
  all_y = np.concatenate([y for _, y in task.client_data])
  assert not np.any(all_y == sh.OOV_ID)
  assert len(task.backdoor_test_data[0]) == len(x_test)  # nobody says 'the king is dead'


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
