"""`r3mes storage ...` and `r3mes registry ...` through Typer's runner."""

from __future__ import annotations

import os
import time
from pathlib import Path

from support.kubo import kubo_node
from typer.testing import CliRunner

from r3mes.cli.storage import registry_app, storage_app
from r3mes.paths import Home
from r3mes.registry.errors import ArtifactNotFound
from r3mes.storage.blockstore import Blockstore
from r3mes.storage.kubo import KuboClient
from r3mes.storage.tempfiles import TEMP_PREFIX

runner = CliRunner()


def test_cid_prints_kubo_cids(tmp_path: Path) -> None:
    f = tmp_path / "hello.txt"
    f.write_bytes(b"hello world\n")
    out = runner.invoke(storage_app, ["cid", str(f), "--cid-version", "0"])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    assert runner.invoke(storage_app, ["cid", str(f), "--cid-version", "2"]).exit_code != 0


def test_add_get_pin_gc_cycle(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = tmp_path / "data.bin"
    src.write_bytes(b"abc" * 100000)
    added = runner.invoke(
        storage_app, ["add", str(src), "--home", str(home)], env={"R3MES_IPFS_URL": ""}
    )
    assert added.exit_code == 0, added.output
    cid = added.output.strip()
    assert cid.startswith("bafy")
    dest = tmp_path / "copy.bin"
    got = runner.invoke(storage_app, ["get", cid, "-o", str(dest), "--home", str(home)])
    assert got.exit_code == 0, got.output
    assert dest.read_bytes() == src.read_bytes()
    listed = runner.invoke(storage_app, ["pin", "--list", "--home", str(home)])
    assert cid in listed.output
    assert runner.invoke(storage_app, ["pin", cid, "--rm", "--home", str(home)]).exit_code == 0
    gc = runner.invoke(storage_app, ["gc", "--home", str(home)])
    assert gc.exit_code == 0 and "removed 3 blocks" in gc.output


def test_help_on_every_command() -> None:
    for app, names in (
        (storage_app, ["cid", "add", "get", "pin", "gc"]),
        (registry_app, ["sync", "list", "pull", "verify"]),
    ):
        for name in names:
            result = runner.invoke(app, [name, "--help"])
            assert result.exit_code == 0 and "Usage" in result.output


def test_registry_list_empty_home(tmp_path: Path) -> None:
    result = runner.invoke(registry_app, ["list", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "kind" in result.output


def test_get_falls_back_when_the_local_copy_is_damaged_and_repairs_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = bytes(range(256)) * 3000
    with kubo_node(tmp_path / "kubo") as node:
        url = node.gateway_url
        cid = KuboClient(node.api_url, timeout=10.0).add_bytes(data)
        local = Blockstore(Home(home).blocks)
        assert local.add_bytes(data) == cid
        leaf = next((Home(home).blocks / "data").rglob("bafkrei*"))
        leaf.write_bytes(b"rotten")
        out = tmp_path / "dl"
        out.mkdir()
        stale = out / f"{TEMP_PREFIX}killed.part"  # left by a `get` that was killed
        stale.write_bytes(b"partial")
        past = time.time() - 3600
        os.utime(stale, (past, past))
        dest = out / "copy.bin"
        got = runner.invoke(
            storage_app, ["get", cid, "-o", str(dest), "--home", str(home), "--gateway", url]
        )
        assert got.exit_code == 0, got.output
        assert dest.read_bytes() == data
        assert local.verify(cid)
        assert sorted(p.name for p in out.iterdir()) == ["copy.bin"]
        # without a remote, the damage is an error and nothing is written
        leaf.write_bytes(b"rotten")
        again = runner.invoke(storage_app, ["get", cid, "-o", str(out / "b"), "--home", str(home)])
        assert again.exit_code != 0 and not (out / "b").exists()


def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    home = ["--home", str(tmp_path)]
    bogus = runner.invoke(registry_app, ["list", "--kind", "bogus", *home])
    assert bogus.exit_code == 2
    assert all(word in bogus.output for word in ("bogus", "'model'", "'dataset'", "'adapter'"))
    pulled = runner.invoke(registry_app, ["pull", "nothing", *home])
    assert isinstance(pulled.exception, ArtifactNotFound)
    assert "no approved artifact 'nothing'" in str(pulled.exception)
    cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    gw = runner.invoke(storage_app, ["get", cid, "--gateway", "ftp://x", *home])
    assert "IPFS gateway URL 'ftp://x'" in str(gw.exception)
