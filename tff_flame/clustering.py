"""HDBSCAN labels for a precomputed distance matrix, in TensorFlow ops.

TFF runs TensorFlow computations in a C++ worker where `tf.py_function` cannot
run, so FLAME's clustering step is written here in plain TF ops. It follows the
`hdbscan` package (0.8.x) step by step so that it returns the same labels as

    hdbscan.HDBSCAN(metric='precomputed', min_cluster_size=m, min_samples=s,
                    allow_single_cluster=True).fit(distances).labels_

The steps: core distances and mutual reachability, Prim's minimum spanning tree
(same tie-breaking as the package), single-linkage merge tree, condensed tree,
excess-of-mass cluster selection (with the package's float32 subtree sums) and
labelling (including its rule for a single selected root cluster).

Known difference: when `min_cluster_size <= n / 2` and several spanning-tree
edges have exactly equal weights, the package's result depends on the order
NumPy's unstable `argsort` gives those edges; this version sorts stably. With
FLAME's default `min_cluster_size = n // 2 + 1` the result does not depend on
that order. Cluster ids are numbered 0..k-1 in this module's own order; the
partition and the noise set (-1) are the package's.
"""

from typing import Union

import numpy as np
import tensorflow as tf

_DBL_MAX = np.finfo(np.float64).max

IntLike = Union[int, tf.Tensor]


def _core_distances(distances: tf.Tensor, min_samples: IntLike) -> tf.Tensor:
  """k-th smallest distance per column, k = clip(min_samples, 1, n - 1)."""
  n = tf.shape(distances)[0]
  k = tf.maximum(tf.minimum(n - 1, min_samples), 1)
  return tf.gather(tf.sort(distances, axis=0), k)


def mutual_reachability(distances: tf.Tensor, min_samples: IntLike) -> tf.Tensor:
  """max(d(i, j), core(i), core(j)), as `hdbscan`'s `mutual_reachability`."""
  core = _core_distances(distances, min_samples)
  return tf.maximum(tf.maximum(distances, core[tf.newaxis, :]), core[:, tf.newaxis])


def prim_mst(graph: tf.Tensor):
  """Prim's spanning tree from node 0, as `hdbscan`'s `mst_linkage_core`.

  Returns (sources, targets, weights), one entry per edge in the order Prim's
  algorithm adds them. Ties go to the lowest node index, as in the package.
  """
  n = tf.shape(graph)[0]
  index = tf.range(n)

  def body(i, current, in_tree, cur_dist, cur_src, srcs, dsts, weights):
    in_tree = in_tree | tf.equal(index, current)
    row = tf.gather(graph, current)
    better = tf.logical_not(in_tree) & (row < cur_dist)
    cur_dist = tf.where(better, row, cur_dist)
    cur_src = tf.where(better, current, cur_src)
    candidates = tf.where(in_tree, _DBL_MAX, cur_dist)
    best = tf.reduce_min(candidates)
    eligible = tf.logical_not(in_tree) & tf.equal(cur_dist, best) & (best < _DBL_MAX)
    new_node = tf.reduce_min(tf.where(eligible, index, n))
    found = new_node < n
    new_node = tf.where(found, new_node, 0)
    source = tf.where(found, tf.gather(cur_src, new_node), 0)
    weight = tf.where(found, best, _DBL_MAX)
    return (i + 1, new_node, in_tree, cur_dist, cur_src,
            srcs.write(i, source), dsts.write(i, new_node),
            weights.write(i, weight))

  init = (
      tf.constant(0), tf.constant(0), tf.zeros([n], tf.bool),
      tf.fill([n], tf.constant(_DBL_MAX, tf.float64)), tf.zeros([n], tf.int32),
      tf.TensorArray(tf.int32, size=n - 1), tf.TensorArray(tf.int32, size=n - 1),
      tf.TensorArray(tf.float64, size=n - 1))
  out = tf.while_loop(lambda i, *_: i < n - 1, body, init)
  return out[5].stack(), out[6].stack(), out[7].stack()


def single_linkage(sources, targets, weights, n):
  """Merge tree from spanning-tree edges, as `hdbscan`'s `label`.

  Edges are merged in ascending weight (stable sort). Node n + k is the k-th
  merge. Returns (left, right, weight, size, members) per merge, where
  members[k] is a bool [n] mask of the points under node n + k.
  """
  order = tf.argsort(weights, stable=True)
  sources = tf.gather(sources, order)
  targets = tf.gather(targets, order)
  weights = tf.gather(weights, order)

  def body(k, root_of, sizes, lefts, rights, merged_sizes, members):
    a = tf.gather(root_of, tf.gather(sources, k))
    b = tf.gather(root_of, tf.gather(targets, k))
    merged = tf.equal(root_of, a) | tf.equal(root_of, b)
    size = tf.gather(sizes, a) + tf.gather(sizes, b)
    new_node = n + k
    root_of = tf.where(merged, new_node, root_of)
    sizes = tf.tensor_scatter_nd_update(sizes, [[new_node]], [size])
    return (k + 1, root_of, sizes, lefts.write(k, a), rights.write(k, b),
            merged_sizes.write(k, size), members.write(k, merged))

  init = (tf.constant(0), tf.range(n),
          tf.concat([tf.ones([n], tf.int32), tf.zeros([n - 1], tf.int32)], 0),
          tf.TensorArray(tf.int32, size=n - 1), tf.TensorArray(tf.int32, size=n - 1),
          tf.TensorArray(tf.int32, size=n - 1),
          tf.TensorArray(tf.bool, size=n - 1, element_shape=tf.TensorShape([None])))
  out = tf.while_loop(lambda k, *_: k < n - 1, body, init)
  members = tf.reshape(out[6].stack(), [n - 1, n])
  return out[3].stack(), out[4].stack(), weights, out[5].stack(), members


def condense_tree(lefts, rights, weights, sizes, members, n, min_cluster_size):
  """Condensed cluster tree, as `hdbscan`'s `condense_tree`.

  Walks merges from the root down. Cluster 0 is the root; a merge whose two
  sides both have >= min_cluster_size points ends its cluster and starts two
  children. Returns a dict of per-cluster arrays (length n; unused ids have
  parent -1) and per-point arrays (the cluster each point falls out of, and
  the lambda = 1 / distance at which it does).
  """
  node_ids = tf.range(n - 1)
  cluster_ids = tf.range(n)
  # Row i: points under node i (nodes < n are single points).
  node_members = tf.concat([tf.eye(n, dtype=tf.bool), members], 0)
  node_sizes = tf.concat([tf.ones([n], tf.int32), sizes], 0)

  def body(k, node_cluster, next_id, point_parent, point_lambda,
           c_parent, c_birth, c_size, c_left, c_right):
    r = tf.gather(node_cluster, k)
    active = r >= 0
    w = tf.gather(weights, k)
    lam = tf.where(w > 0.0, 1.0 / tf.where(w > 0.0, w, 1.0),
                   tf.constant(np.inf, tf.float64))
    left, right = tf.gather(lefts, k), tf.gather(rights, k)
    left_count, right_count = tf.gather(node_sizes, left), tf.gather(node_sizes, right)
    big_left = left_count >= min_cluster_size
    big_right = right_count >= min_cluster_size
    split = active & big_left & big_right
    # Children nodes inherit: a new cluster on a split, else the parent's cluster.
    left_label = tf.where(split, next_id, r)
    right_label = tf.where(split, next_id + 1, r)
    node_cluster = tf.where(tf.equal(node_ids, left - n) & active & big_left,
                            left_label, node_cluster)
    node_cluster = tf.where(tf.equal(node_ids, right - n) & active & big_right,
                            right_label, node_cluster)
    new_left = split & tf.equal(cluster_ids, next_id)
    new_right = split & tf.equal(cluster_ids, next_id + 1)
    c_parent = tf.where(new_left | new_right, r, c_parent)
    c_birth = tf.where(new_left | new_right, lam, c_birth)
    c_size = tf.where(new_left, left_count, tf.where(new_right, right_count, c_size))
    c_left = tf.where(split & tf.equal(cluster_ids, r), next_id, c_left)
    c_right = tf.where(split & tf.equal(cluster_ids, r), next_id + 1, c_right)
    next_id = next_id + tf.where(split, 2, 0)
    # Small sides fall out of the cluster at this lambda.
    falls = ((active & tf.logical_not(big_left) & tf.gather(node_members, left)) |
             (active & tf.logical_not(big_right) & tf.gather(node_members, right)))
    point_parent = tf.where(falls, r, point_parent)
    point_lambda = tf.where(falls, lam, point_lambda)
    return (k - 1, node_cluster, next_id, point_parent, point_lambda,
            c_parent, c_birth, c_size, c_left, c_right)

  minus_ones = -tf.ones([n], tf.int32)
  init = (n - 2, tf.where(tf.equal(node_ids, n - 2), 0, -tf.ones([n - 1], tf.int32)),
          tf.constant(1), minus_ones, tf.zeros([n], tf.float64),
          minus_ones, tf.zeros([n], tf.float64), tf.zeros([n], tf.int32),
          minus_ones, minus_ones)
  out = tf.while_loop(lambda k, *_: k >= 0, body, init)
  return dict(num_clusters=out[2], point_parent=out[3], point_lambda=out[4],
              parent=out[5], birth=out[6], size=out[7], left=out[8], right=out[9])


def _stabilities(tree, n):
  """Excess of mass per cluster: sum over its rows of (lambda - birth) * size."""
  birth = tree['birth']
  point_terms = tree['point_lambda'] - tf.gather(birth, tree['point_parent'])
  child_terms = ((birth - tf.gather(birth, tf.maximum(tree['parent'], 0))) *
                 tf.cast(tree['size'], tf.float64))
  return (tf.math.unsorted_segment_sum(point_terms, tree['point_parent'], n) +
          tf.math.unsorted_segment_sum(child_terms, tree['parent'], n))


def select_clusters(tree, n):
  """Excess-of-mass selection with the root allowed, as `get_clusters`.

  Returns a bool [n] mask of selected cluster ids. The package sums a
  cluster's children's stabilities in a C float; so does this.
  """
  stability = _stabilities(tree, n)
  num_clusters = tree['num_clusters']

  def eom_body(c, stability, tentative):
    left, right = tf.gather(tree['left'], c), tf.gather(tree['right'], c)
    has_children = left >= 0
    left_s = tf.gather(stability, tf.maximum(left, 0))
    right_s = tf.gather(stability, tf.maximum(right, 0))
    subtree = tf.cast(tf.cast(left_s, tf.float32), tf.float64) + right_s
    subtree = tf.cast(tf.cast(subtree, tf.float32), tf.float64)
    subtree = tf.where(has_children, subtree, tf.constant(0.0, tf.float64))
    own = tf.gather(stability, c)
    children_win = subtree > own
    at_c = tf.equal(tf.range(n), c)
    stability = tf.where(at_c & children_win, subtree, stability)
    tentative = tf.where(at_c, tf.logical_not(children_win), tentative)
    return c - 1, stability, tentative

  _, _, tentative = tf.while_loop(
      lambda c, *_: c >= 0, eom_body,
      (num_clusters - 1, stability, tf.zeros([n], tf.bool)))

  # A selected cluster deselects all its descendants; parents have lower ids.
  def down_body(c, blocked):
    parent = tf.gather(tree['parent'], c)
    p = tf.maximum(parent, 0)
    is_blocked = (parent >= 0) & (tf.gather(blocked, p) | tf.gather(tentative, p))
    return c + 1, tf.where(tf.equal(tf.range(n), c), is_blocked, blocked)

  _, blocked = tf.while_loop(lambda c, *_: c < num_clusters, down_body,
                             (tf.constant(0), tf.zeros([n], tf.bool)))
  return tentative & tf.logical_not(blocked) & (tf.range(n) < num_clusters)


def _owners(tree, selected, n):
  """Nearest selected ancestor-or-self of each cluster, -1 where there is none."""
  def body(c, owner):
    parent = tf.gather(tree['parent'], c)
    inherited = tf.where(parent >= 0, tf.gather(owner, tf.maximum(parent, 0)), -1)
    value = tf.where(tf.gather(selected, c), c, inherited)
    return c + 1, tf.where(tf.equal(tf.range(n), c), value, owner)

  _, owner = tf.while_loop(lambda c, *_: c < tree['num_clusters'], body,
                           (tf.constant(0), -tf.ones([n], tf.int32)))
  return owner


def _labels_from_tree(tree, selected, n):
  """Point labels, as `do_labelling` with allow_single_cluster=True."""
  owner = tf.gather(_owners(tree, selected, n), tree['point_parent'])
  # A selected root keeps only the points that leave it last.
  root_rows = tf.concat([
      tf.where(tf.equal(tree['point_parent'], 0), tree['point_lambda'], 0.0),
      tf.where(tf.equal(tree['parent'], 0), tree['birth'], 0.0)], 0)
  root_max = tf.maximum(tf.reduce_max(root_rows), 0.0)
  in_root = tree['point_lambda'] >= root_max
  labels = tf.where(tf.equal(owner, 0), tf.where(in_root, 0, -1), owner)
  # Dense ids 0..k-1 in cluster-id order.
  rank = tf.cumsum(tf.cast(selected, tf.int32)) - 1
  return tf.where(labels >= 0, tf.gather(rank, tf.maximum(labels, 0)), -1)


def _labels_for_two_or_more(distances, min_cluster_size, min_samples):
  n = tf.shape(distances)[0]
  graph = mutual_reachability(distances, min_samples)
  sources, targets, weights = prim_mst(graph)
  lefts, rights, weights, sizes, members = single_linkage(sources, targets, weights, n)
  tree = condense_tree(lefts, rights, weights, sizes, members, n, min_cluster_size)
  selected = select_clusters(tree, n)
  return _labels_from_tree(tree, selected, n)


def hdbscan_labels(distances, min_cluster_size: IntLike, min_samples: IntLike = 1) -> tf.Tensor:
  """HDBSCAN labels (int32 [n], -1 = noise) in TF ops, usable inside TFF.

  Args:
    distances: [n, n] symmetric, finite distance matrix with a zero diagonal.
    min_cluster_size: smallest cluster, >= 2 (an int or int32 scalar tensor).
    min_samples: neighbours for the core distance (FLAME uses 1).

  Fewer than two points form no cluster: every label is -1.
  """
  if isinstance(min_cluster_size, int) and min_cluster_size < 2:
    raise ValueError(f'min_cluster_size must be >= 2, got {min_cluster_size}.')
  if isinstance(min_samples, int) and min_samples < 1:
    raise ValueError(f'min_samples must be >= 1, got {min_samples}.')
  distances = tf.cast(tf.convert_to_tensor(distances), tf.float64)  # float32 or float64
  min_cluster_size = tf.convert_to_tensor(min_cluster_size, tf.int32)
  min_samples = tf.convert_to_tensor(min_samples, tf.int32)
  n = tf.shape(distances)[0]
  return tf.cond(
      n >= 2,
      lambda: _labels_for_two_or_more(distances, min_cluster_size, min_samples),
      lambda: -tf.ones([n], tf.int32))


def hdbscan_labels_py_function(distances, min_cluster_size: IntLike,
                               min_samples: IntLike = 1) -> tf.Tensor:
  """The `hdbscan` package's labels through `tf.py_function` (imported lazily).

  Only for TF running in the Python process (eager code, a `tf.function`
  called directly); TFF's C++ worker cannot run it.
  """
  def call(d, m, s):
    import hdbscan  # pylint: disable=g-import-not-at-top
    d = d.numpy()
    if d.shape[0] < 2:
      return -np.ones(d.shape[0], np.int32)
    clusterer = hdbscan.HDBSCAN(metric='precomputed', min_cluster_size=int(m.numpy()),
                                min_samples=int(s.numpy()), allow_single_cluster=True)
    return clusterer.fit(d).labels_.astype(np.int32)
  labels = tf.py_function(call, [tf.cast(tf.convert_to_tensor(distances), tf.float64),
                                 min_cluster_size, min_samples], tf.int32)
  labels.set_shape([None])
  return labels
