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

from typing import NamedTuple, Union

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


class _PrimState(NamedTuple):
  """Prim's loop: the edge count, the node just added, the tree so far and its edges."""
  step: tf.Tensor
  current: tf.Tensor  # the node added last
  in_tree: tf.Tensor  # bool [n]
  best_distance: tf.Tensor  # [n] each node's distance to the tree
  best_source: tf.Tensor  # [n] the tree node at that distance
  sources: tf.TensorArray
  targets: tf.TensorArray
  weights: tf.TensorArray


def prim_mst(graph: tf.Tensor):
  """Prim's spanning tree from node 0, as `hdbscan`'s `mst_linkage_core`.

  Returns (sources, targets, weights), one entry per edge in the order Prim's
  algorithm adds them. Ties go to the lowest node index, as in the package.
  """
  n = tf.shape(graph)[0]
  index = tf.range(n)

  def body(*loop_vars):
    s = _PrimState(*loop_vars)
    in_tree = s.in_tree | tf.equal(index, s.current)
    row = tf.gather(graph, s.current)
    better = tf.logical_not(in_tree) & (row < s.best_distance)
    best_distance = tf.where(better, row, s.best_distance)
    best_source = tf.where(better, s.current, s.best_source)
    candidates = tf.where(in_tree, _DBL_MAX, best_distance)
    best = tf.reduce_min(candidates)
    eligible = tf.logical_not(in_tree) & tf.equal(best_distance, best) & (best < _DBL_MAX)
    new_node = tf.reduce_min(tf.where(eligible, index, n))
    found = new_node < n
    new_node = tf.where(found, new_node, 0)
    source = tf.where(found, tf.gather(best_source, new_node), 0)
    weight = tf.where(found, best, _DBL_MAX)
    return _PrimState(
        step=s.step + 1, current=new_node, in_tree=in_tree, best_distance=best_distance,
        best_source=best_source, sources=s.sources.write(s.step, source),
        targets=s.targets.write(s.step, new_node), weights=s.weights.write(s.step, weight))

  init = _PrimState(
      step=tf.constant(0), current=tf.constant(0), in_tree=tf.zeros([n], tf.bool),
      best_distance=tf.fill([n], tf.constant(_DBL_MAX, tf.float64)),
      best_source=tf.zeros([n], tf.int32),
      sources=tf.TensorArray(tf.int32, size=n - 1), targets=tf.TensorArray(tf.int32, size=n - 1),
      weights=tf.TensorArray(tf.float64, size=n - 1))
  out = tf.while_loop(lambda step, *_: step < n - 1, body, init)
  return out.sources.stack(), out.targets.stack(), out.weights.stack()


class _LinkageState(NamedTuple):
  """Single linkage's loop: the merge count, each point's current root, node sizes, merges."""
  step: tf.Tensor
  root_of: tf.Tensor  # [n] the node each point belongs to now
  sizes: tf.Tensor  # [2n - 1] points under each node
  lefts: tf.TensorArray
  rights: tf.TensorArray
  merged_sizes: tf.TensorArray
  members: tf.TensorArray  # bool [n] per merge: the points under it


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

  def body(*loop_vars):
    s = _LinkageState(*loop_vars)
    a = tf.gather(s.root_of, tf.gather(sources, s.step))
    b = tf.gather(s.root_of, tf.gather(targets, s.step))
    merged = tf.equal(s.root_of, a) | tf.equal(s.root_of, b)
    size = tf.gather(s.sizes, a) + tf.gather(s.sizes, b)
    new_node = n + s.step
    return _LinkageState(
        step=s.step + 1, root_of=tf.where(merged, new_node, s.root_of),
        sizes=tf.tensor_scatter_nd_update(s.sizes, [[new_node]], [size]),
        lefts=s.lefts.write(s.step, a), rights=s.rights.write(s.step, b),
        merged_sizes=s.merged_sizes.write(s.step, size), members=s.members.write(s.step, merged))

  init = _LinkageState(
      step=tf.constant(0), root_of=tf.range(n),
      sizes=tf.concat([tf.ones([n], tf.int32), tf.zeros([n - 1], tf.int32)], 0),
      lefts=tf.TensorArray(tf.int32, size=n - 1), rights=tf.TensorArray(tf.int32, size=n - 1),
      merged_sizes=tf.TensorArray(tf.int32, size=n - 1),
      members=tf.TensorArray(tf.bool, size=n - 1, element_shape=tf.TensorShape([None])))
  out = tf.while_loop(lambda step, *_: step < n - 1, body, init)
  members = tf.reshape(out.members.stack(), [n - 1, n])
  return out.lefts.stack(), out.rights.stack(), weights, out.merged_sizes.stack(), members


class _CondenseState(NamedTuple):
  """The condensed tree's loop, merges walked from the root down (node n - 2 + k at step k)."""
  merge: tf.Tensor  # the merge visited, from n - 2 down to 0
  node_cluster: tf.Tensor  # [n - 1] the cluster each merge node belongs to, -1 if none yet
  next_id: tf.Tensor  # the next free cluster id
  point_parent: tf.Tensor  # [n] the cluster each point falls out of
  point_lambda: tf.Tensor  # [n] the lambda at which it does
  parent: tf.Tensor  # [n] per cluster id: its parent cluster (-1: unused or the root)
  birth: tf.Tensor  # [n] the lambda at which it splits from its parent
  size: tf.Tensor  # [n] its number of points at birth
  left: tf.Tensor  # [n] its first child cluster (-1: none)
  right: tf.Tensor  # [n] its second child cluster


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

  def body(*loop_vars):
    s = _CondenseState(*loop_vars)
    r = tf.gather(s.node_cluster, s.merge)
    active = r >= 0
    w = tf.gather(weights, s.merge)
    lam = tf.where(w > 0.0, tf.math.reciprocal_no_nan(w), tf.constant(np.inf, tf.float64))
    left, right = tf.gather(lefts, s.merge), tf.gather(rights, s.merge)
    left_count, right_count = tf.gather(node_sizes, left), tf.gather(node_sizes, right)
    big_left = left_count >= min_cluster_size
    big_right = right_count >= min_cluster_size
    split = active & big_left & big_right
    # Children nodes inherit: a new cluster on a split, else the parent's cluster.
    left_label = tf.where(split, s.next_id, r)
    right_label = tf.where(split, s.next_id + 1, r)
    node_cluster = tf.where(tf.equal(node_ids, left - n) & active & big_left,
                            left_label, s.node_cluster)
    node_cluster = tf.where(tf.equal(node_ids, right - n) & active & big_right,
                            right_label, node_cluster)
    new_left = split & tf.equal(cluster_ids, s.next_id)
    new_right = split & tf.equal(cluster_ids, s.next_id + 1)
    splits_here = split & tf.equal(cluster_ids, r)
    # Small sides fall out of the cluster at this lambda.
    falls = ((active & tf.logical_not(big_left) & tf.gather(node_members, left)) |
             (active & tf.logical_not(big_right) & tf.gather(node_members, right)))
    return _CondenseState(
        merge=s.merge - 1, node_cluster=node_cluster,
        next_id=s.next_id + tf.where(split, 2, 0),
        point_parent=tf.where(falls, r, s.point_parent),
        point_lambda=tf.where(falls, lam, s.point_lambda),
        parent=tf.where(new_left | new_right, r, s.parent),
        birth=tf.where(new_left | new_right, lam, s.birth),
        size=tf.where(new_left, left_count, tf.where(new_right, right_count, s.size)),
        left=tf.where(splits_here, s.next_id, s.left),
        right=tf.where(splits_here, s.next_id + 1, s.right))

  minus_ones = -tf.ones([n], tf.int32)
  init = _CondenseState(
      merge=n - 2, node_cluster=tf.where(tf.equal(node_ids, n - 2), 0, -tf.ones([n - 1], tf.int32)),
      next_id=tf.constant(1), point_parent=minus_ones, point_lambda=tf.zeros([n], tf.float64),
      parent=minus_ones, birth=tf.zeros([n], tf.float64), size=tf.zeros([n], tf.int32),
      left=minus_ones, right=minus_ones)
  out = tf.while_loop(lambda merge, *_: merge >= 0, body, init)
  return dict(num_clusters=out.next_id, point_parent=out.point_parent,
              point_lambda=out.point_lambda, parent=out.parent, birth=out.birth, size=out.size,
              left=out.left, right=out.right)


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
