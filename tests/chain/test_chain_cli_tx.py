"""`r3mes tx` for every ledger message against a real devnet on 127.0.0.1, and bad input
refused before signing: exit code != 0, a message saying what to do, nothing on chain."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chain.chain_harness import key
from support.net import free_port
from typer.testing import CliRunner, Result

from r3mes.chain import msgs, vocab
from r3mes.chain.client import BlockchainClient, round_assigned_shard
from r3mes.chain.devnet import DevnetConfig, DevnetNode, devnet_genesis, init_devnet
from r3mes.chain.keystore import Keystore
from r3mes.chain.msgs import ArtifactSpec
from r3mes.cli import chain_tx
from r3mes.cli.main import app
from r3mes.errors import R3mesError
from r3mes.paths import Home
from r3mes.storage.unixfs import compute_cid

PASS = "correct horse"
NAMES = {"authority": 1, "miner": 2, "validator": 3, "proposer": 4, "serving": 5, "poor": 6}
ADDR = {name: key(n).address for name, n in NAMES.items()}
MODEL_BYTES = b"a tiny model bundle"
MODEL = ArtifactSpec(
    kind="model",
    id="bitnet-tiny",
    version=1,
    cid=compute_cid(MODEL_BYTES),
    sha256=hashlib.sha256(MODEL_BYTES).hexdigest(),
    size=len(MODEL_BYTES),
)
runner = CliRunner()


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Home, str]]:
    """A devnet (rounds of 40 blocks of 50 ms) and a home whose wallet holds every role's key."""
    home = Home(root=tmp_path_factory.mktemp("cli-tx"))
    store = Keystore(home.keys, scrypt_n=2**10)
    for name, n in NAMES.items():
        store.import_secret(name, secret_hex=n.to_bytes(32, "big").hex(), passphrase=PASS)
    funded = {address: 10_000 for name, address in ADDR.items() if name != "poor"}
    genesis = devnet_genesis(
        accounts=funded,
        artifacts=[MODEL],
        authority=ADDR["authority"],
        pow_difficulty=6,
        round_length=40,
        shards_per_round=4,
    )
    init_devnet(home, genesis)
    node = DevnetNode(home, DevnetConfig(port=free_port(), block_interval_s=0.05))
    node.start()
    yield home, node.url
    node.stop()


def test_cli_choices_are_the_chains_vocabulary() -> None:
    # The names are imported, not re-exported, by both modules: read their namespaces.
    cli_names, msgs_names = vars(chain_tx), vars(msgs)
    assert (cli_names["ROLES"], cli_names["VERDICTS"], cli_names["KINDS"]) == (
        msgs_names["ROLES"],
        msgs_names["VERDICTS"],
        msgs_names["KINDS"],
    )
    assert cli_names["ROLES"] is vocab.ROLES and cli_names["KINDS"] is vocab.KINDS


def cli(devnet: tuple[Home, str], *args: str, passphrase: str = PASS) -> Result:
    home, url = devnet
    env = {"R3MES_PASSPHRASE": passphrase}
    return runner.invoke(app, [*args, "--home", str(home.root), "--node", url], env=env)


def ok(devnet: tuple[Home, str], *args: str) -> dict[str, Any]:
    result = cli(devnet, "tx", *args)
    assert result.exit_code == 0, (result.output, result.exception)
    doc: dict[str, Any] = json.loads(result.output)
    assert len(doc["hash"]) == 64 and doc["height"] > 0
    return doc


def event(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(e for e in doc["events"] if e["type"] == kind)


def wait_until(check: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_role_messages_through_the_cli(devnet: tuple[Home, str], tmp_path: Path) -> None:
    url = devnet[1]
    client = BlockchainClient(url, timeout_s=5, retries=1)
    for role in ("miner", "validator", "proposer", "serving"):
        ok(devnet, "register-node", "--from", role, "--role", role, "--stake", "10")
    assert client.account(ADDR["miner"]).roles == ["miner"]

    # Leave the round room to include the submission before it closes.
    wait_until(lambda: client.current_round().close_height - client.status().height > 15)
    digest = hashlib.sha256(b"update").hexdigest()
    update_cid = compute_cid(b"update")
    args = ["--cid", update_cid, "--digest", digest]
    rnd = client.current_round()
    assigned = round_assigned_shard(rnd, ADDR["miner"])
    wrong = (assigned + 1) % rnd.shards_per_round
    refused = cli(devnet, "tx", "submit-gradient", "--from", "miner", "--shard", str(wrong), *args)
    assert refused.exit_code == 1 and f"must take shard {assigned}" in str(refused.exception)
    assert "leave out --shard" in str(refused.exception)
    submitted = ok(devnet, "submit-gradient", "--from", "miner", *args)  # --shard defaults
    sid = int(event(submitted, "submit_gradient")["submission_id"])
    sub = next(s for s in client.submissions() if s.id == sid)
    assert (sub.shard, sub.cid, sub.digest, sub.status) == (assigned, update_cid, digest, "pending")

    attested = ok(devnet, "attest", "--from", "validator", str(sid), "accept", "--distance", "0.01")
    assert event(attested, "submission_verified")["miner"] == ADDR["miner"]
    att = next(s for s in client.submissions() if s.id == sid).attestations[0]
    assert (att["verdict"], att["distance_ppm"]) == ("accept", 10_000)

    round_number = sub.round
    wait_until(lambda: client.round(round_number).status == "closed")
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    proposed = ok(
        devnet,
        "propose-adapter",
        "--from",
        "proposer",
        "--round",
        str(round_number),
        "--submission",
        str(sid),
        str(folder),
        "--add",
    )
    assert client.approved_artifacts("adapter") == []  # a proposal until a quorum checks it
    pending = client.proposal(round_number)
    assert pending is not None and pending.status == "pending"
    assert pending.assigned == [ADDR["validator"]]
    approved = ok(devnet, "attest-adapter", "--from", "validator", str(round_number), "1", "accept")
    assert event(approved, "adapter_approved")["version"] == "1"
    adapter = client.approved_artifacts("adapter")[0]
    assert (adapter.version, adapter.cid, adapter.base_model_id) == (1, proposed["cid"], MODEL.id)
    assert proposed["stored"] == proposed["cid"]

    ok(
        devnet,
        "heartbeat",
        "--from",
        "serving",
        "--endpoint",
        "http://127.0.0.1:9000",
        "--adapter-version",
        "1",
        "--capacity",
        "4",
    )
    serving = client.nodes("serving")[0]
    assert (serving.endpoint, serving.adapter_version, serving.capacity) == (
        "http://127.0.0.1:9000",
        1,
        4,
    )


def test_register_and_approve_artifacts_then_registry_sync(
    devnet: tuple[Home, str], tmp_path: Path
) -> None:
    """register-artifact from a file (--add) and from flags, approve, then `registry sync` and
    `registry pull` against the same devnet through the CLI."""
    home, url = devnet
    data = tmp_path / "corpus.txt"
    data.write_bytes(b"def f():\n    return 1\n" * 50)
    registered = ok(
        devnet, "register-artifact", "--from", "miner", "dataset", "ds", "1", str(data), "--add"
    )
    content = data.read_bytes()
    assert registered["artifact"]["cid"] == compute_cid(content) == registered["stored"]
    assert registered["artifact"]["sha256"] == hashlib.sha256(content).hexdigest()
    assert registered["artifact"]["size"] == len(content)
    flags = ["--cid", MODEL.cid, "--sha256", MODEL.sha256, "--size", str(MODEL.size)]
    ok(devnet, "register-artifact", "--from", "miner", "model", "bitnet-tiny", "2", *flags)

    denied = cli(devnet, "tx", "approve-artifact", "--from", "miner", "dataset", "ds", "1")
    assert denied.exit_code != 0 and "only the genesis authority" in str(denied.exception)
    approved = ok(devnet, "approve-artifact", "--from", "authority", "dataset", "ds", "1")
    assert event(approved, "approve_artifact")["key"].startswith("dataset/ds/")

    sync = runner.invoke(app, ["registry", "sync", "--chain", url, "--home", str(home.root)])
    assert sync.exit_code == 0, (sync.output, sync.exception)
    assert "dataset: 1 approved, 0 rejected" in sync.output
    assert "model: 1 approved, 0 rejected" in sync.output  # v2 is only registered
    pull = runner.invoke(app, ["registry", "pull", "ds", "--home", str(home.root)])
    assert pull.exit_code == 0, (pull.output, pull.exception)
    installed = home.datasets / "ds" / "1"
    assert any(p.read_bytes() == content for p in installed.rglob("*") if p.is_file())
    verify = runner.invoke(app, ["registry", "verify", "ds", "--home", str(home.root)])
    assert verify.exit_code == 0 and "ok" in verify.output


GOOD_CID = compute_cid(b"x")
GOOD_HEX = "ab" * 32
FLAGS = ["--cid", GOOD_CID, "--sha256", GOOD_HEX, "--size", "1"]
SUBMIT = ["submit-gradient"]
REGISTER = ["register-artifact"]
BAD_INPUT = [
    # (signer, args, exit code, what the message says)
    ("miner", ["transfer", "--to", "remes1notanaddress", "--amount", "5"], 2, "remes1..."),
    ("miner", ["transfer", "--to", ADDR["poor"], "--amount", "-5"], 2, "'--amount'"),
    ("nobody", ["transfer", "--to", ADDR["poor"], "--amount", "5"], 1, "r3mes wallet list"),
    ("poor", ["transfer", "--to", ADDR["miner"], "--amount", "5"], 1, "get credits first"),
    ("miner", ["faucet", "--amount", "0"], 2, "'--amount'"),
    ("miner", ["faucet", "--amount", "2000000"], 1, "faucet amount is limited to 1000000"),
    ("miner", ["register-node", "--role", "king"], 2, "not one of miner"),
    ("miner", ["register-node", "--role", "miner", "--endpoint", "a b"], 1, "endpoint must be"),
    ("poor", [*SUBMIT, "--cid", "Qmnope", "--digest", GOOD_HEX], 2, "not a CID"),
    ("poor", [*SUBMIT, "--cid", GOOD_CID, "--digest", "xyz"], 2, "64 hex"),
    ("poor", [*SUBMIT, "--cid", GOOD_CID, "--digest", GOOD_HEX], 1, "not a registered miner"),
    ("poor", ["attest", "1", "maybe"], 2, "not one of accept, reject"),
    ("poor", ["attest", "1", "accept", "--distance", "-1"], 2, "greater than or equal to 0"),
    ("poor", ["attest", "1", "accept", "--distance", "inf"], 2, "finite"),
    ("poor", ["attest", "1", "accept"], 1, "not a registered validator"),
    ("poor", ["propose-adapter", "--round", "1", "--submission", "1", *FLAGS], 1, "proposer"),
    ("poor", ["propose-adapter", "--round", "1", "--submission", "1"], 1, "--cid, --sha256"),
    ("poor", ["heartbeat", "--endpoint", "http://x"], 1, "not a registered serving"),
    ("miner", [*REGISTER, "dataset", "d", "1", *FLAGS[2:], "--cid", "bafy!"], 2, "not a CID"),
    ("miner", [*REGISTER, "dataset", "a/b", "1", *FLAGS], 1, "registry could not install"),
    ("miner", [*REGISTER, "adapter", "ad", "1", *FLAGS], 1, "base_model_id"),
    ("miner", [*REGISTER, "model", "m", "1"], 1, "give a FILE/DIR path"),
    ("miner", [*REGISTER, "dataset", "d", "1", "/nonexistent/file"], 1, "not a file or folder"),
    ("miner", ["approve-artifact", "model", "bitnet-tiny", "1"], 1, "only the genesis authority"),
]


def flat(text: str) -> str:
    """Output with Rich's panel borders and line wrapping removed."""
    return " ".join(text.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


@pytest.mark.parametrize(("signer", "args", "code", "says"), BAD_INPUT, ids=lambda v: str(v)[:24])
def test_bad_input_is_refused_before_signing(
    devnet: tuple[Home, str], signer: str, args: list[str], code: int, says: str
) -> None:
    client = BlockchainClient(devnet[1], timeout_s=5, retries=1)
    before = {name: client.account(address) for name, address in ADDR.items()}
    result = cli(devnet, "tx", *args, "--from", signer)
    assert result.exit_code == code, (result.output, result.exception)
    if code == 1:  # an R3mesError: main() prints it as one line, no traceback
        assert isinstance(result.exception, R3mesError), repr(result.exception)
    assert says in flat(result.output + str(result.exception))
    after = {name: client.account(address) for name, address in ADDR.items()}
    assert after == before  # no sequence bumped, no balance moved: nothing was signed


def test_wrong_passphrase_is_refused(devnet: tuple[Home, str]) -> None:
    client = BlockchainClient(devnet[1], timeout_s=5, retries=1)
    before = client.account(ADDR["miner"])
    args = ["tx", "transfer", "--from", "miner", "--to", ADDR["poor"], "--amount", "5"]
    result = cli(devnet, *args, passphrase="wrong")
    assert result.exit_code == 1 and "wrong passphrase" in str(result.exception)
    assert client.account(ADDR["miner"]) == before


def test_real_command_prints_one_line_without_traceback(devnet: tuple[Home, str]) -> None:
    """Through the installed entry point (`main()`), as a user sees it."""
    home, url = devnet
    base = [sys.executable, "-m", "r3mes.cli.main", "tx", "transfer", "--from", "miner"]
    common = ["--home", str(home.root), "--node", url]
    env = {**os.environ, "R3MES_PASSPHRASE": "wrong", "COLUMNS": "200"}
    for extra, code, says in [
        (["--to", ADDR["poor"], "--amount", "5"], 1, "error: wrong passphrase for key 'miner'"),
        (["--to", "remes1xyz", "--amount", "5"], 2, "Invalid value for '--to'"),
    ]:
        proc = subprocess.run(
            [*base, *extra, *common], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == code, proc.stderr
        assert says in flat(proc.stderr) and "Traceback" not in proc.stderr
