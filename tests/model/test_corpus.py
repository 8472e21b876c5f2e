from pathlib import Path

from r3mes.model.corpus import (
    HELDOUT_MODULUS,
    docstring_documents,
    is_heldout,
    split_corpus,
    topic_documents,
)


def test_topics_are_sorted_and_nonempty() -> None:
    docs = topic_documents()
    assert len(docs) > 50
    names = [d.split("\n", 1)[0] for d in docs]
    assert names == sorted(names)


def test_docstrings_read_without_importing(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""Package docstring that is long enough to be kept."""\n')
    (pkg / "mod.py").write_text(
        'raise SystemExit("imported!")\n'
        "class Thing:\n"
        '    """A thing with a docstring long enough to be kept here."""\n'
        "    def go(self):\n"
        '        """Go somewhere, a method docstring long enough to keep."""\n'
        "def short():\n"
        '    """Too short."""\n'
    )
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.py").write_text(
        '"""A test module docstring that is skipped entirely."""'
    )
    docs = docstring_documents(tmp_path)
    assert [d.split("\n", 1)[0] for d in docs] == ["pkg", "pkg.mod.Thing", "pkg.mod.Thing.go"]


def test_split_is_by_content_hash() -> None:
    docs = [f"document number {i}" for i in range(400)]
    train, heldout = split_corpus(docs)
    assert len(train) + len(heldout) == 400
    assert 0 < len(heldout) < 400 // HELDOUT_MODULUS * 3
    assert set(split_corpus(list(reversed(docs)))[1]) == set(heldout)
    assert all(is_heldout(d) for d in heldout)
