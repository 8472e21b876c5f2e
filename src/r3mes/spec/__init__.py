"""Consensus rules that more than one concern must compute identically.

The ledger (`r3mes.chain`) enforces these rules and the miners (`r3mes.work`, `r3mes.node`)
follow them; both import them from here so there is exactly one definition of each. This
package depends only on the standard library and `r3mes.errors`: importing it never loads
torch, numpy or a server.
"""
