"""Regenerate the checked-in protobuf stubs: `python -m r3mes.chain.proto.regen`.

Reads every `.proto` under `proto/` at the repository root (the ledger's own
`remes/remes/v1/`, and CometBFT v0.38.26's ABCI types under `tendermint/` with the
`gogoproto/gogo.proto` they import, copied from the Go module cache with their licences)
and writes `*_pb2.py` (and `.pyi`) under `src/r3mes/chain/proto/gen/`, using grpcio-tools'
bundled protoc. protoc writes absolute imports (`from tendermint.crypto import ...`); they
are rewritten to point inside this package.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
PROTO_ROOT = REPO_ROOT / "proto"
GEN_ROOT = Path(__file__).resolve().parent / "gen"


def regenerate(out: Path = GEN_ROOT) -> int:
    """Run protoc over every ledger .proto file into `out`; returns protoc's exit status."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        *sources,
    ]
    status = int(protoc.main(args))
    for generated in out.rglob("*_pb2.py*"):
        generated.write_text(_package_imports(generated.read_text()))
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated protobuf stubs; do not edit."""\n')
    return status


_TOP_LEVEL = ("tendermint", "gogoproto", "remes")


def _package_imports(source: str) -> str:
    """`from tendermint.x import y` -> `from r3mes.chain.proto.gen.tendermint.x import y`."""
    for top in _TOP_LEVEL:
        source = source.replace(f"from {top}.", f"from r3mes.chain.proto.gen.{top}.")
        source = source.replace(f"from {top} import", f"from r3mes.chain.proto.gen.{top} import")
        source = source.replace(f"import {top}.", f"import r3mes.chain.proto.gen.{top}.")
    return source


if __name__ == "__main__":
    sys.exit(regenerate())
