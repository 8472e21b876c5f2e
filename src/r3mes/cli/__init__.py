"""The `r3mes` command line."""
