"""Process plumbing every long-running R3MES process shares: pid files and the liveness
rule behind them, and a graceful stop on SIGTERM or SIGINT.

It sits below `chain` and `node` (it imports neither), so the devnet ledger and the role
services apply one rule for "is it still running?".
"""
