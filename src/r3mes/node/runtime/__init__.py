"""What every role service runs on: the `RoleService` base and its HTTP face, JSON logs,
the child-process supervisor of `r3mes up`, control from another shell, and retries.

Pid files and signal handling live one level down, in `r3mes.runtime`, which the devnet
ledger shares.
"""
