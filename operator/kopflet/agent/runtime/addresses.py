"""Which address of the node's instance subnet each instance holds (host-local IPAM).

The agent picks an instance's address before its first container is created, and every
later container that holds the instance's network (a replaced sandbox, or the one
container of an instance without a sandbox, restarted) asks the engine for that same
address. So the instance IP is known before a create (``status.podIP`` in the
environment) and stays the same across restarts, like a pod's.

Nothing is kept on disk: every container we create carries its instance's address in a
label, and the relist's listing hands those back (with the addresses the engine gave
sandboxes of older agents), so a restarted agent learns the book again before it picks
anything. New addresses are taken round-robin from the last one picked, like CNI's
host-local IPAM: an address just let go is the last to be reused, after conntrack and
the proxies' endpoints have forgotten it.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Final

from kopflet.agent.runtime.container_runtime import RuntimeOperationError
from kopflet.api import UID

#: The engine may still be letting go of an address a container stopped a moment ago held:
#: a refusal is believed the second time in a row, not the first.
REFUSALS_TO_GIVE_UP: Final = 2
#: An address the engine refused (something not ours holds it) is not picked for this long.
FOREIGN_SECONDS: Final = 300.0


class SubnetExhausted(RuntimeOperationError):
    """Every address of the node's instance subnet is held."""


class InstanceAddresses:
    def __init__(self, subnet: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        network = ipaddress.ip_network(subnet)
        hosts = [str(h) for h in network.hosts()]
        #: The first address is the bridge's (the instances' gateway).
        self._pool = hosts[1:]
        self._in_pool = frozenset(self._pool)
        self._by_uid: dict[UID, str] = {}
        self._holders: dict[str, UID] = {}
        #: Addresses something not ours holds on the network (a start was refused), until when.
        self._foreign: dict[str, float] = {}
        self._refusals: dict[UID, int] = {}
        self._cursor = 0

    def uids(self) -> set[UID]:
        return set(self._by_uid)

    def get(self, uid: UID) -> str | None:
        return self._by_uid.get(uid)

    def observe(self, uid: UID, ip: str) -> None:
        """The engine shows ``uid`` holding (or labelled with) ``ip``."""
        if not ip or self._by_uid.get(uid) == ip:
            return
        # An address given up (the engine refused it) stays given up, even though older
        # containers of the instance still carry it in their label.
        if ip not in self._holders and ip in self._in_pool and not self._is_foreign(ip):
            self._assign(uid, ip)

    def address_for(self, uid: UID) -> str:
        """The instance's address, picked now if it has none."""
        held = self._by_uid.get(uid)
        if held is not None:
            return held
        size = len(self._pool)
        for step in range(size):
            candidate = self._pool[(self._cursor + step) % size]
            if candidate not in self._holders and not self._is_foreign(candidate):
                self._cursor = (self._cursor + step + 1) % size
                self._assign(uid, candidate)
                return candidate
        raise SubnetExhausted(f"no free address in the instance subnet ({size} addresses)")

    def release(self, uid: UID) -> None:
        """Nothing of the instance is left on the engine: its address is free again."""
        self._refusals.pop(uid, None)
        ip = self._by_uid.pop(uid, None)
        if ip is not None:
            self._holders.pop(ip, None)

    def refused(self, uid: UID, ip: str) -> bool:
        """The engine said ``ip`` is taken. The second time in a row it is believed: the
        address is left alone for a while and ``uid`` gets another one (True)."""
        count = self._refusals.get(uid, 0) + 1
        if count < REFUSALS_TO_GIVE_UP:
            self._refusals[uid] = count
            return False
        self._foreign[ip] = self._clock() + FOREIGN_SECONDS
        if self._by_uid.get(uid) == ip:
            self.release(uid)
        self._refusals.pop(uid, None)
        return True

    def accepted(self, uid: UID) -> None:
        """The engine gave ``uid`` its address."""
        self._refusals.pop(uid, None)

    def _is_foreign(self, ip: str) -> bool:
        until = self._foreign.get(ip)
        if until is None:
            return False
        if until <= self._clock():
            del self._foreign[ip]
            return False
        return True

    def _assign(self, uid: UID, ip: str) -> None:
        old = self._by_uid.get(uid)
        if old is not None:
            self._holders.pop(old, None)
        self._by_uid[uid] = ip
        self._holders[ip] = uid
