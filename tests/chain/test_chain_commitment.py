"""The sparse Merkle commitment: incremental updates equal a rebuild, order never matters."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from r3mes.chain import commitment
from r3mes.chain.commitment import EMPTY_HASH, Inner, Leaf, Tree, build, root_hash, update

keys = st.text(alphabet="abcdefgh/0123", min_size=1, max_size=6)
values = st.binary(max_size=8)
batches = st.lists(st.dictionaries(keys, st.none() | values, max_size=12), max_size=6)


def leaves(tree: Tree) -> list[Leaf]:
    if tree is None:
        return []
    if isinstance(tree, Leaf):
        return [tree]
    return leaves(tree.left) + leaves(tree.right)


def assert_canonical(tree: Tree) -> None:
    """An inner node holds at least two leaves; a lone leaf is never wrapped."""
    if isinstance(tree, Inner):
        assert len(leaves(tree)) >= 2
        assert_canonical(tree.left)
        assert_canonical(tree.right)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(keys, values, max_size=30), batches)
def test_incremental_updates_equal_a_rebuild(
    start: dict[str, bytes], changes: list[dict[str, bytes | None]]
) -> None:
    tree = build(start.items())
    entries = dict(start)
    for batch in changes:
        before = root_hash(tree)
        new = update(tree, batch)
        assert root_hash(tree) == before  # the old tree is untouched (persistent)
        for key, value in batch.items():
            if value is None:
                entries.pop(key, None)
            else:
                entries[key] = value
        assert root_hash(new) == root_hash(build(entries.items()))
        assert sorted(leaf.key for leaf in leaves(new)) == sorted(entries)
        assert_canonical(new)
        tree = new


def test_root_ignores_order_and_commits_to_every_byte() -> None:
    entries = [(f"accounts/{i}", f'{{"balance":{i}}}'.encode()) for i in range(300)]
    shuffled = entries[:]
    random.Random(7).shuffle(shuffled)
    root = root_hash(build(entries))
    assert root_hash(build(shuffled)) == root
    assert root_hash(build(entries[:-1])) != root
    tampered = update(build(entries), {"accounts/5": b'{"balance":6}'})
    assert root_hash(tampered) != root
    assert root_hash(update(tampered, {"accounts/5": b'{"balance":5}'})) == root
    assert root_hash(build([])) == EMPTY_HASH
    assert update(None, {"gone": None}) is None


def test_a_one_entry_change_copies_only_its_path() -> None:
    tree = build((f"k{i}", b"v") for i in range(4096))
    new = update(tree, {"k17": b"w"})
    assert isinstance(tree, Inner) and isinstance(new, Inner)
    # One side of the root is shared object-for-object with the old tree.
    assert (new.left is tree.left) != (new.right is tree.right)
    assert commitment.make_leaf("k17", b"w") in leaves(new)
