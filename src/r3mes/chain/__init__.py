"""r3mes.chain: the ledger.

Modules, bottom up (nothing is imported here, so `import r3mes.chain` stays cheap):

- `crypto`, `bech32`, `keystore`: secp256k1 keys, `remes1...` addresses, BIP39/BIP32,
  passphrase-encrypted key files.
- `vocab`: roles, verdicts, artifact kinds and statuses as `Literal` types (no imports).
- `msgs`, `tx`, `proto/`: message dataclasses, the signed Cosmos-style TxRaw envelope.
- `genesis`, `state`, `handlers`, `transition`, `pow`: the pure deterministic state
  machine (`apply_block(state, block) -> (state, result)`, `check_tx`, `simulate_tx`);
  the shard and round-seed rules come from `r3mes.spec.shards`.
- `application`: the state machine behind ABCI 2.0-named methods.
- `store`, `engine`, `metrics`, `devnet`: SQLite persistence, the embedded single-node
  engine and its Prometheus metrics, and `init_devnet` / `DevnetNode` for running one.
- `rpc`, `rest`, `views`, `abci`: CometBFT-shaped JSON-RPC and REST under /remes/remes/v1.
- `client`, `client_types`, `artifact_record`: `BlockchainClient` / `AsyncBlockchainClient`
  for every node, and `ArtifactRecord`, the one artifact record outside the ledger's state;
  they import nothing of the server side.
"""
