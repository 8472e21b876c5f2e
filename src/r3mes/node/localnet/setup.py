"""Everything `r3mes up` prepares before a process starts: keys, artifacts, genesis.

One home holds the whole local network: a keystore with one key per role instance (under a
passphrase generated once and kept in a 0600 file), the shared blockstore with the base
model, the domain dataset and adapter version 1, the work profile every role reads, and a
devnet genesis naming those three artifacts as approved. Re-running on a prepared home
reuses all of it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from r3mes.node.errors import ValidationError
from r3mes.node.miner.parts import CHEATS
from r3mes.paths import Home
from r3mes.work.profile import DEFAULT_COMPRESSION, WorkProfile
from r3mes.work.task import HyperParams

if TYPE_CHECKING:
    from r3mes.chain.genesis import Genesis

logger = logging.getLogger(__name__)

PASSPHRASE_FILE = ".up-passphrase"
DATASET_ID = "python-stdlib-domain"
TINY_MODEL_ID = "r3mes-tiny-dev"
TREASURY_KEY = "backend-treasury"
FAUCET_KEY = "backend-faucet"
FAUCET_GENESIS_CREDITS = 1_000_000


@dataclass(frozen=True)
class NetworkSpec:
    """What `r3mes up` builds."""

    home: Home
    miners: int = 2
    cheaters: tuple[str, ...] = ()
    """FAULT INJECTION: one extra miner per entry, cheating that way ("random", "copy")."""
    round_blocks: int = 20
    difficulty: int = 8
    block_interval: float = 1.0
    serving: bool = True
    backend: bool = True
    """Start the backend (accounts, paid chat, explorer, web dashboard) beside the roles."""
    ipfs_url: str | None = None
    """Kubo RPC API shared with other machines: genesis artifacts and every role's output
    are added there too (None: the local blockstore alone)."""
    base_model: str = "shipped"
    """"shipped" (the packaged model) or "tiny" (a 2-layer model made on the spot; tests)."""
    shards: int = 8
    dataset_chars: int = 200_000
    validators: int = 1
    """Validator role processes; the ledger assigns each submission to all of them (n)."""
    quorum: int = 1
    """Matching verdicts of assigned validators that settle a submission (k <= validators)."""
    per_submission: int = 0
    """Validators the ledger assigns to each submission (n; 0: all `validators`)."""
    liars: int = 0
    """FAULT INJECTION: the last `liars` validators attest the opposite of their verdicts."""
    attestation_rounds: int = 2
    """Rounds after a submission's own during which its assigned validators may attest."""
    profile: WorkProfile = field(
        default_factory=lambda: WorkProfile(
            hyper=HyperParams(lr="0.005", steps=4, batch_size=4, seq_len=64, **DEFAULT_COMPRESSION),
            eval_chunks=16,
        )
    )

    def __post_init__(self) -> None:
        if not 1 <= self.miners <= 32:
            raise ValidationError("--miners must be in [1, 32]")
        if self.round_blocks < 4:
            raise ValidationError("--round-blocks must be at least 4")
        if not 0 <= self.difficulty <= 32:
            raise ValidationError("--difficulty must be in [0, 32]")
        if not 0 < self.block_interval <= 600:
            raise ValidationError(
                f"--block-interval must be in (0, 600] seconds, got {self.block_interval}"
            )
        for cheat in self.cheaters:
            if cheat not in CHEATS:
                raise ValidationError(f"--cheat must be one of {CHEATS}, got {cheat!r}")
        if self.ipfs_url is not None:
            _check_http_url(self.ipfs_url, "--ipfs-url")
        if self.base_model not in ("shipped", "tiny"):
            raise ValidationError("--base-model must be 'shipped' or 'tiny'")
        if not 1 <= self.validators <= 16:
            raise ValidationError("--verifiers must be in [1, 16]")
        if not 1 <= self.quorum <= self.validators:
            raise ValidationError("--quorum must be in [1, --verifiers]")
        if not 0 <= self.per_submission <= self.validators or self.quorum > (
            self.per_submission or self.validators
        ):
            raise ValidationError("validators per submission must be in [--quorum, --verifiers]")
        if not 0 <= self.liars <= self.validators:
            raise ValidationError("--lying-verifiers must be in [0, --verifiers]")
        if self.miners + len(self.cheaters) > self.shards:
            raise ValidationError("more miners than shards per round; raise --shards")

    def role_keys(self) -> list[tuple[str, str]]:
        """(role, instance name) of every role process, in start order."""
        out = [("miner", f"miner-{i}") for i in range(1, self.miners + 1)]
        out += [("miner", f"cheater-{i}") for i in range(1, len(self.cheaters) + 1)]
        out += [("validator", f"validator-{i}") for i in range(1, self.validators + 1)]
        out.append(("proposer", "proposer-1"))
        if self.serving:
            out.append(("serving", "serving-1"))
        return out

    def service_keys(self) -> dict[str, int]:
        """Keys of the services beside the roles, with their genesis balances: the backend's
        treasury (receives deposits, pays serving operators) and its faucet."""
        if not self.backend:
            return {}
        return {TREASURY_KEY: 1000, FAUCET_KEY: FAUCET_GENESIS_CREDITS}


def _check_http_url(url: str, flag: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed or out-of-range port
    except ValueError as exc:
        raise ValidationError(f"{flag} {url!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(
            f"{flag} must be an http(s) URL like http://127.0.0.1:5001, got {url!r}"
        )


def passphrase(home: Home) -> str:
    """The keystore passphrase of this local network (created once, mode 0600)."""
    path = home.keys / PASSPHRASE_FILE
    if path.is_file():
        return path.read_text().strip()
    home.keys.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret


def ensure_keys(spec: NetworkSpec) -> dict[str, str]:
    """Create missing role keys; returns instance name -> address."""
    from r3mes.chain.errors import KeystoreError
    from r3mes.chain.keystore import Keystore

    store = Keystore(spec.home.keys, scrypt_n=2**14)
    secret = passphrase(spec.home)
    out = {}
    for name in [name for _, name in spec.role_keys()] + list(spec.service_keys()):
        try:
            info = store.show(name)
        except KeystoreError:
            info, _ = store.create(name, passphrase=secret)
        out[name] = info.address
    return out


def _model_folder(spec: NetworkSpec) -> tuple[Path, str]:
    if spec.base_model == "shipped":
        from r3mes.model.shipped import SHIPPED_MODEL_NAME, shipped_model_dir

        return shipped_model_dir(), SHIPPED_MODEL_NAME
    folder = spec.home.cache / "tiny-model"
    if not (folder / "tokenizer.json").is_file():
        from r3mes.model.checkpoint import save_pretrained
        from r3mes.model.tiny import make_tiny_model
        from r3mes.model.tokenizer import train_bpe_tokenizer
        from r3mes.work.domain import build_domain_corpus

        shutil.rmtree(folder, ignore_errors=True)
        tokenizer = train_bpe_tokenizer([t[:20_000] for t in build_domain_corpus()[:4]], 512)
        save_pretrained(make_tiny_model(0, vocab_size=512), folder, packed=False)
        tokenizer.save(folder)
    return folder, TINY_MODEL_ID


def genesis_differences(
    spec: NetworkSpec, genesis: Genesis, addresses: dict[str, str]
) -> list[str]:
    """What an existing network's genesis fixed differently from `spec` (empty: reusable).

    Round length, proof-of-work difficulty, quorum and validators per submission are
    genesis parameters, and only genesis accounts are funded: a role key made after it
    (another miner, a cheater, a validator) would register with no stake at all.
    """
    params = genesis.params
    fixed = (
        ("--round-blocks", params.round_length, spec.round_blocks),
        ("--difficulty", params.pow_difficulty, spec.difficulty),
        ("--quorum", params.attestation_quorum, spec.quorum),
        ("--verifiers", params.validators_per_submission, spec.per_submission or spec.validators),
    )
    out = [f"{flag} {have} (asked: {want})" for flag, have, want in fixed if have != want]
    tiny = any(a.kind == "model" and a.id == TINY_MODEL_ID for a in genesis.artifacts)
    if tiny != (spec.base_model == "tiny"):
        out.append(f"--base-model {'tiny' if tiny else 'shipped'} (asked: {spec.base_model})")
    funded = {account.address for account in genesis.accounts}
    unfunded = sorted(name for name, address in addresses.items() if address not in funded)
    if unfunded:
        out.append(f"no genesis account for {', '.join(unfunded)}")
    return out


def prepare_genesis(spec: NetworkSpec, addresses: dict[str, str]) -> None:
    """Publish the artifacts and write the devnet genesis (skipped if one exists)."""
    from r3mes.chain.devnet import devnet_genesis, genesis_path, init_devnet
    from r3mes.chain.msgs import ArtifactSpec
    from r3mes.model.checkpoint import load_pretrained
    from r3mes.model.tokenizer import load_tokenizer
    from r3mes.node.localnet.bootstrap import (
        build_domain_dataset,
        publish_bytes,
        publish_genesis_adapter,
        publish_model_dir,
    )
    from r3mes.storage.tiered import open_store

    if genesis_path(spec.home).is_file():
        from r3mes.chain.genesis import Genesis

        differences = genesis_differences(spec, Genesis.load(genesis_path(spec.home)), addresses)
        if differences:
            raise ValidationError(
                f"{spec.home.root} already holds a network made with other options "
                f"({'; '.join(differences)}); its ledger cannot change them. Start it with "
                "the options it was made with, or start a new network in another folder "
                "(--home DIR) or after removing this one"
            )
        logger.info("reusing the devnet genesis in %s", spec.home.root)
        return
    store = open_store(spec.home.blocks, ipfs_url=spec.ipfs_url)
    folder, model_id = _model_folder(spec)
    model = publish_model_dir(store, folder)
    data_path = build_domain_dataset(
        load_tokenizer(folder),
        out_path=spec.home.datasets / "domain.r3tok",
        chunk_len=spec.profile.hyper.seq_len,
        max_chars=spec.dataset_chars,
    )
    dataset = publish_bytes(store, data_path.read_bytes())
    adapter = publish_genesis_adapter(
        store, model=load_pretrained(folder), profile=spec.profile, base_model_cid=model.cid
    )
    h = spec.profile.hyper
    artifacts = [
        ArtifactSpec("model", model_id, 1, model.cid, model.sha256, model.size),
        ArtifactSpec("dataset", DATASET_ID, 1, dataset.cid, dataset.sha256, dataset.size),
        ArtifactSpec(
            "adapter",
            "r3mes-adapter",
            1,
            adapter.cid,
            adapter.sha256,
            adapter.size,
            base_model_id=model_id,
            base_model_version=1,
            target_modules=tuple(h.target_modules),
            rank=h.rank,
        ),
    ]
    balances = {address: spec.service_keys().get(name, 1000) for name, address in addresses.items()}
    genesis = devnet_genesis(
        accounts=balances,
        artifacts=artifacts,
        round_length=spec.round_blocks,
        pow_difficulty=spec.difficulty,
        shards_per_round=spec.shards,
        attestation_quorum=spec.quorum,
        validators_per_submission=spec.per_submission or spec.validators,
        attestation_rounds=spec.attestation_rounds,
    )
    init_devnet(spec.home, genesis, overwrite=True)
    spec.profile.save(spec.home.root / "work.json")
