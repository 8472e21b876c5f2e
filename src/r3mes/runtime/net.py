"""Loopback ports for processes a command starts (devnets, Kubo nodes, backends, tests).

A port is chosen now and bound later by another process, so something else may take it in
between. Ports the kernel hands out for binds to port 0 and for outgoing connections come
from the ephemeral range (`ip_local_port_range`, usually 32768-60999); on a busy machine
one of those can be taken by any client's next connection. So `free_port` picks at random
below that range (ports nothing is given without asking for them by number), checks that it
binds, and falls back to the kernel's choice only if none does. A port is never handed out
twice by one process (within the last `REMEMBERED` picks): a testnet takes a dozen ports
before any is bound, and two random picks from ~12,000 ports collide about once in a
hundred such networks.
"""

from __future__ import annotations

import random
import socket
import threading
from collections import deque
from pathlib import Path

LOWEST = 20_000
"""The lowest port `free_port` picks (above the well-known and most registered ones)."""
TRIES = 64
REMEMBERED = 4096
"""How many of this process's latest picks `free_port` never repeats."""
_given: deque[int] = deque(maxlen=REMEMBERED)
_lock = threading.Lock()
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_start(path: Path = EPHEMERAL) -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        low = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768
    return low


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, outside the ephemeral range
    where possible (see the module docstring)."""
    high = ephemeral_start() - 1
    rng = random.SystemRandom()
    with _lock:
        if high > LOWEST:
            for _ in range(TRIES):
                port = rng.randint(LOWEST, high)
                if port not in _given and _binds(port):
                    _given.append(port)
                    return port
        for _ in range(TRIES):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _given:
                break
        _given.append(port)
        return port


def _binds(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
