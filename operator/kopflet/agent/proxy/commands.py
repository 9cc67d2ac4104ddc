"""Running the node's network tools (iptables, nft, ip, conntrack) in the right namespace.

The agent runs inside the node's network namespace, where the plain commands are
right. Tests and the local cluster drive a namespace from outside: then every command
is prefixed with ``nsenter --net=/run/netns/NAME`` (not ``ip netns exec``, which also
remounts /sys and needs a mount namespace of its own).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

#: A network tool that hangs (a stuck xtables lock, say) must not stall the sync loop forever.
DEFAULT_TIMEOUT = 60.0
#: Applying or reading a whole ruleset: iptables-nft and nft 1.0 grow worse than linearly
#: with the number of chains (tens of seconds for 1,000 service-ports x 10 endpoints).
RULESET_TIMEOUT = 900.0


class CommandError(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"{' '.join(self.argv[:3])}... exited {returncode}: {self.stderr[:2000]}")


@dataclass(frozen=True)
class CommandRunner:
    """Runs commands in the current network namespace, or in ``/run/netns/<netns>``."""

    netns: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def argv(self, args: Sequence[str]) -> list[str]:
        if self.netns is None:
            return list(args)
        return ["nsenter", f"--net=/run/netns/{self.netns}", *args]

    def run(
        self,
        args: Sequence[str],
        *,
        stdin: str | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = self.argv(args)
        timeout = self.timeout if timeout is None else timeout
        try:
            done = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(argv, -1, f"timed out after {timeout}s") from exc
        except FileNotFoundError as exc:
            raise CommandError(argv, 127, str(exc)) from exc
        if check and done.returncode != 0:
            raise CommandError(argv, done.returncode, done.stderr)
        return done
