"""The miner role: `miner` (the service), `parts` (its collaborators wired to the ledger,
storage and `r3mes.work`), `coordinator` (the atomic mining transaction) and its
`journal`, `task_pool` (open tasks and prefetched artifacts), `residual` (error feedback)
and `settlement` (when a residual is promoted or dropped; validators apply the same rule).
"""
