"""`r3mes up`: a whole network on one machine. `setup` prepares the home (keys, the
genesis artifacts that `bootstrap` publishes, the devnet genesis), `network` starts the
devnet and every role as real processes and watches them, `dashboard` shows it.
"""
