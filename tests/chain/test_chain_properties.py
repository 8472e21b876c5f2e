"""Hypothesis properties of the transition: conservation, no negatives, replay safety."""

from __future__ import annotations

from chain.chain_harness import CHAIN_ID, FORGERIES, Harness, forge, key, make_genesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r3mes.chain.codes import Code
from r3mes.chain.msgs import Attest, Faucet, Msg, RegisterNode, SubmitGradient, TransferCredits
from r3mes.chain.pow import solve_pow
from r3mes.chain.state import State, state_from_entries
from r3mes.chain.transition import apply_block, check_tx
from r3mes.chain.vocab import Role, Verdict

KEYS = [key(i) for i in range(1, 7)]  # key 6 has no genesis account

op = st.tuples(
    st.sampled_from(
        [
            "transfer",
            "faucet",
            "register",
            "submit",
            "attest",
            "replay",
            "wrong_chain",
            "forge",
            "forge_sig",
        ]
    ),
    st.integers(0, len(KEYS) - 1),
    st.integers(0, len(KEYS) - 1),
    st.integers(0, 2000),
)


def build(h: Harness, kind: str, a: int, b: int, n: int) -> tuple[Msg, int]:
    sender, other = KEYS[a], KEYS[b]
    if kind == "faucet":
        return Faucet(creator=sender.address, to=other.address, amount=max(n, 1)), a
    if kind == "register":
        roles: tuple[Role, Role] = ("miner", "validator")
        role = roles[n % 2]
        return RegisterNode(creator=sender.address, role=role, stake=n % 300), a
    if kind == "submit":
        opened = h.state.current_round in h.state.rounds
        msg = SubmitGradient(
            creator=sender.address,
            round=h.state.current_round,
            shard=h.assigned(sender) if opened and n % 5 else n % 4,
            cid="bafyx",
            digest=f"{n % 256:02x}" * 32,
        )
        return solve_pow(msg, chain_id=CHAIN_ID, difficulty=2), a
    if kind == "attest":
        verdicts: tuple[Verdict, Verdict] = ("accept", "reject")
        verdict = verdicts[n % 2]
        return Attest(creator=sender.address, submission_id=1 + n % 3, verdict=verdict), a
    return TransferCredits(creator=sender.address, to=other.address, amount=max(n, 1)), a


def check_invariants(state: State, genesis_supply: int) -> None:
    balances = sum(acc.balance for acc in state.accounts.values())
    stakes = sum(node.stake for node in state.nodes.values())
    assert balances + stakes == state.supply
    assert state.supply == genesis_supply + state.minted - state.burned
    assert all(acc.balance >= 0 for acc in state.accounts.values())
    assert all(node.stake >= 0 for node in state.nodes.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(op, max_size=4), min_size=1, max_size=8))
def test_random_blocks_conserve_credits_and_reject_replays(
    blocks: list[list[tuple[str, int, int, int]]],
) -> None:
    h = Harness(make_genesis(round_length=3, attestation_quorum=1))
    genesis_supply = h.state.supply
    seen: list[bytes] = []
    for ops in blocks:
        txs: list[bytes] = []
        expect_reject: set[int] = set()
        signature_only: set[int] = set()  # forged txs nothing but the signature can refuse
        signers_in_block: set[str] = set()
        for kind, a, b, n in ops:
            if kind == "replay" and seen:
                expect_reject.add(len(txs))
                txs.append(seen[n % len(seen)])
                continue
            msg, signer = build(h, kind, a, b, n)
            signer_key = KEYS[signer]
            acc = h.state.accounts.get(signer_key.address)
            seq = acc.sequence if acc else 0
            if kind == "wrong_chain":
                expect_reject.add(len(txs))
                txs.append(h.sign(signer_key, [msg], chain_id="other-chain", sequence=seq))
            elif kind == "forge":
                expect_reject.add(len(txs))
                forger = KEYS[(signer + 1) % len(KEYS)]
                txs.append(h.sign(forger, [msg], sequence=seq))
            elif kind == "forge_sig":
                # The victim's own pubkey, creator and sequence; only the signature is bad.
                expect_reject.add(len(txs))
                number = acc.number if acc else 0
                honest = h.sign(signer_key, [msg], sequence=seq)
                forged = forge(honest, FORGERIES[n % 3], account_number=number, salt=n)
                assert check_tx(h.state, forged).code == Code.UNAUTHORIZED
                if signer_key.address not in signers_in_block:
                    signature_only.add(len(txs))
                txs.append(forged)
            else:
                txs.append(h.sign(signer_key, [msg], sequence=seq))
            signers_in_block.add(signer_key.address)
        result = h.block(txs)
        for i in expect_reject:
            assert result.tx_results[i].code in (Code.WRONG_SEQUENCE, Code.UNAUTHORIZED)
        for i in signature_only:
            assert result.tx_results[i].code == Code.UNAUTHORIZED
        seen.extend(t for t, r in zip(txs, result.tx_results, strict=True) if r.code == 0)
        check_invariants(h.state, genesis_supply)
    # Replaying the chain from genesis reproduces the final app hash.
    replay = Harness(h.genesis)
    for block in h.blocks:
        replay.state, _ = apply_block(replay.state, block)  # type: ignore[arg-type]
    assert replay.state.app_hash() == h.state.app_hash()
    # The incrementally maintained commitment equals one built from scratch.
    assert state_from_entries(h.state.entries()).app_hash() == h.state.app_hash()


_STATE = Harness().state


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_check_tx_answers_a_code_for_any_bytes(data: bytes) -> None:
    result = check_tx(_STATE, data)
    assert result.code == Code.DECODE or result.code != 0
