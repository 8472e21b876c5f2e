"""The state commitment: a persistent, compressed sparse Merkle tree over state entries.

Every state entry is a (key, canonical bytes) pair. Its leaf sits on the path given by
SHA-256(key), and the tree keeps only the branching it needs: a subtree holding one leaf
is that leaf, an inner node exists only where two or more leaves share a path prefix.
So the tree, and its root hash (the app hash), depend only on the set of entries, never
on the order they were written in; replaying blocks from genesis rebuilds the same root.

Nodes are immutable: `update` copies the O(log n) nodes on the paths of the changed keys
and shares the rest with the old tree, so a block's commitment costs time in proportion
to what it changed, and the previous state's tree stays valid.

    leaf hash  = SHA-256(0x00 || SHA-256(key) || SHA-256(value))
    inner hash = SHA-256(0x01 || left hash || right hash)     (empty subtree: 32 zero bytes)
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

EMPTY_HASH = bytes(32)
_LEAF, _INNER = b"\x00", b"\x01"


@dataclass(frozen=True, slots=True)
class Leaf:
    path: bytes
    """SHA-256 of the entry's key: where the leaf lives."""
    key: str
    value_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class Inner:
    left: Tree
    right: Tree
    hash: bytes


Tree = Leaf | Inner | None
"""A tree is a leaf, an inner node, or None (no entries)."""


def root_hash(tree: Tree) -> bytes:
    return EMPTY_HASH if tree is None else tree.hash


def make_leaf(key: str, value: bytes) -> Leaf:
    path = hashlib.sha256(key.encode()).digest()
    value_hash = hashlib.sha256(value).digest()
    return Leaf(path, key, value_hash, hashlib.sha256(_LEAF + path + value_hash).digest())


def _bit(path: bytes, depth: int) -> int:
    return (path[depth >> 3] >> (7 - (depth & 7))) & 1


def _join(left: Tree, right: Tree) -> Tree:
    """The canonical node over two subtrees: a lone leaf moves up, an empty pair vanishes."""
    if left is None and (right is None or isinstance(right, Leaf)):
        return right
    if right is None and isinstance(left, Leaf):
        return left
    return Inner(left, right, hashlib.sha256(_INNER + root_hash(left) + root_hash(right)).digest())


def _build(leaves: Sequence[Leaf], lo: int, hi: int, depth: int) -> Tree:
    """The subtree of leaves[lo:hi] (sorted by path, sharing their first `depth` bits)."""
    if hi - lo <= 1:
        return leaves[lo] if hi > lo else None
    mid = bisect_left(leaves, 1, lo, hi, key=lambda leaf: _bit(leaf.path, depth))
    return _join(_build(leaves, lo, mid, depth + 1), _build(leaves, mid, hi, depth + 1))


def build(entries: Iterable[tuple[str, bytes]]) -> Tree:
    """The tree of (key, value bytes) entries (keys unique)."""
    leaves = sorted((make_leaf(k, v) for k, v in entries), key=lambda leaf: leaf.path)
    return _build(leaves, 0, len(leaves), 0)


Change = tuple[bytes, str, "Leaf | None"]
"""(path, key, new leaf or None to delete), sorted by path."""


def _update(tree: Tree, changes: Sequence[Change], lo: int, hi: int, depth: int) -> Tree:
    if lo == hi:
        return tree
    if not isinstance(tree, Inner):
        # An empty subtree or a single leaf: rebuild from the few leaves involved.
        kept = {} if tree is None else {tree.path: tree}
        for path, _, leaf in changes[lo:hi]:
            if leaf is None:
                kept.pop(path, None)
            else:
                kept[path] = leaf
        leaves = sorted(kept.values(), key=lambda leaf: leaf.path)
        return _build(leaves, 0, len(leaves), depth)
    mid = bisect_left(changes, 1, lo, hi, key=lambda change: _bit(change[0], depth))
    left = _update(tree.left, changes, lo, mid, depth + 1)
    right = _update(tree.right, changes, mid, hi, depth + 1)
    if left is tree.left and right is tree.right:
        return tree
    return _join(left, right)


def update(tree: Tree, changes: Mapping[str, bytes | None]) -> Tree:
    """A new tree with `changes` (key -> new value bytes, or None to delete) applied.

    `tree` itself is not modified; unchanged subtrees are shared with it.
    """
    batch: list[Change] = []
    for key, value in changes.items():
        if value is None:
            batch.append((hashlib.sha256(key.encode()).digest(), key, None))
        else:
            leaf = make_leaf(key, value)
            batch.append((leaf.path, key, leaf))
    batch.sort(key=lambda change: change[0])
    return _update(tree, batch, 0, len(batch), 0)
