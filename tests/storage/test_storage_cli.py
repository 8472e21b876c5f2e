"""`r3mes storage ...` and `r3mes registry ...` through Typer's runner."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from r3mes.cli.storage import registry_app, storage_app

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
