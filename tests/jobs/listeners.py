"""The TCP sockets a set of processes listens on, read from ``/proc`` (Linux), not from Ray."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

LISTEN = "0A"  # the TCP state code of a listening socket in /proc/net/tcp*


def _address(hex_address: str) -> str:
    """``0100007F:1F90`` -> ``127.0.0.1:8080`` (IPv4 and IPv6, as the kernel writes them)."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # the kernel prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"{ip}:{int(port, 16)}"


def _listening_inodes() -> dict[str, str]:
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN:
                inodes[fields[9]] = _address(fields[1])
    return inodes


def listeners(pids: Iterable[int]) -> set[tuple[int, str]]:
    """``(pid, "ip:port")`` for every listening TCP socket of ``pids``."""
    inodes = _listening_inodes()
    found = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # the process has gone
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = target[len("socket:[") : -1]
                if inode in inodes:
                    found.add((pid, inodes[inode]))
    return found
