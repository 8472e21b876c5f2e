"""The checked-in protobuf stubs are exactly what protoc makes from proto/."""

from __future__ import annotations

from pathlib import Path

from r3mes.chain.proto.regen import GEN_ROOT, PROTO_ROOT, regenerate


def test_checked_in_stubs_match_proto_sources(tmp_path: Path) -> None:
    assert (PROTO_ROOT / "remes/remes/v1/tx.proto").is_file()
    assert regenerate(tmp_path) == 0
    for name in ("tx_pb2.py", "query_pb2.py", "tx_pb2.pyi", "query_pb2.pyi"):
        fresh = (tmp_path / "remes/remes/v1" / name).read_text()
        assert fresh == (GEN_ROOT / "remes/remes/v1" / name).read_text(), (
            f"{name} is stale; run python -m r3mes.chain.proto.regen"
        )
