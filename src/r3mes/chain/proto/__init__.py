"""Protobuf definitions of the ledger's transactions and queries (generated stubs in `gen/`)."""
