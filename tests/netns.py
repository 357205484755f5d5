"""Hosts on one machine: network namespaces, each joined to this side by a veth pair.

Each "host" is a namespace with its own loopback and one veth end; the other
end stays here, so a server bound to this end's address is reachable from
that host only through its veth, and taking the link down cuts that host off
(a blackhole: packets are dropped, nothing answers with a reset). Only the
namespaces and veths made here are touched, and :meth:`Hosts.delete`
removes them all, also after a failure half-way through creating them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

# Private range of these hosts: one /30 per veth pair, 10.213.<n>.0/30.
ADDRESS_PREFIX = "10.213"
# Third octets to try: a pair whose /30 is already on some interface is skipped.
OCTETS = range(0, 256)


class IpFailed(RuntimeError):
    """An ``ip`` command failed; the message is ip's own."""


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"cbprobe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def ip(*args: str) -> str:
    """Run one ``ip`` command; its failure raises with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise IpFailed(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    """One namespace and its link: ``server_address`` is this side's end, ``address`` the host's own."""

    name: str
    namespace: str
    outside: str
    inside: str
    server_address: str
    address: str

    def exec_prefix(self) -> list[str]:
        """The argv prefix that runs a command on this host."""
        return ["ip", "netns", "exec", self.namespace]

    def cut(self) -> None:
        """Take the link down from this side: the host's packets go nowhere until :meth:`restore`."""
        ip("link", "set", self.outside, "down")

    def restore(self) -> None:
        ip("link", "set", self.outside, "up")


class Hosts:
    """Namespaces named ``cbtest-<pid>-<host>``, made with :meth:`create`, removed with :meth:`delete`."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.tag = str(os.getpid())
        self.hosts: dict[str, Host] = {}

    def create(self) -> Hosts:
        octets = iter(self._free_octets())
        try:
            for index, name in enumerate(self.names):
                self.hosts[name] = self._make(name, index, next(octets))
        except BaseException:
            self.delete()
            raise
        return self

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def server_addresses(self) -> list[str]:
        return [host.server_address for host in self.hosts.values()]

    def _free_octets(self) -> list[int]:
        used = ip("-o", "-4", "addr", "show")
        free = [n for n in OCTETS if f" {ADDRESS_PREFIX}.{n}." not in used][: len(self.names)]
        if len(free) < len(self.names):
            raise IpFailed(f"fewer than {len(self.names)} free /30 ranges left in {ADDRESS_PREFIX}.0.0/16")
        return free

    def _make(self, name: str, index: int, octet: int) -> Host:
        host = Host(
            name=name,
            namespace=f"cbtest-{self.tag}-{name}",
            outside=f"cbo{self.tag}{index}"[-15:],
            inside=f"cbi{self.tag}{index}"[-15:],
            server_address=f"{ADDRESS_PREFIX}.{octet}.1",
            address=f"{ADDRESS_PREFIX}.{octet}.2",
        )
        ip("netns", "add", host.namespace)
        self.hosts[name] = host  # from here on, delete() removes it
        ip("link", "add", host.outside, "type", "veth", "peer", "name", host.inside, "netns", host.namespace)
        ip("addr", "add", f"{host.server_address}/30", "dev", host.outside)
        ip("link", "set", host.outside, "up")
        inside = ["-n", host.namespace]
        ip(*inside, "addr", "add", f"{host.address}/30", "dev", host.inside)
        ip(*inside, "link", "set", host.inside, "up")
        ip(*inside, "link", "set", "lo", "up")
        return host

    def delete(self) -> None:
        """Remove our namespaces; deleting one removes its veth pair with it."""
        for host in self.hosts.values():
            subprocess.run(["ip", "link", "delete", host.outside], capture_output=True)
            subprocess.run(["ip", "netns", "delete", host.namespace], capture_output=True)
        self.hosts.clear()
