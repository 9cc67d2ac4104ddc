"""``kopflet agent``: run one node until stopped, or ``--cleanup`` its netfilter state."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from loguru import logger

from kopflet.agent.observability import setup_logging
from kopflet.agent.options import AgentOptions, OptionsError, parse_options


def cleanup() -> int:
    """Remove every chain, table and route of ours (all proxy modes), nothing else."""
    from kopflet.agent.proxy import cleanup_all

    report = cleanup_all()
    for removed in report.removed:
        print(f"removed: {removed}")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if report.errors else 0


async def _run_until_signalled(options: AgentOptions) -> None:
    from kopflet.agent.node_agent import NodeAgentProcess

    agent = NodeAgentProcess(options)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    await agent.run()


def main(argv: Sequence[str]) -> int:
    try:
        options = parse_options(argv)
    except OptionsError as error:
        print(f"kopflet agent: {error}", file=sys.stderr)
        return 2
    setup_logging(log_format=options.log_format, level=options.log_level, node=options.node_name)
    if options.cleanup:
        return cleanup()
    try:
        asyncio.run(_run_until_signalled(options))
    except asyncio.CancelledError:
        return 0
    except KeyboardInterrupt:
        return 0
    except Exception:
        logger.exception("agent failed")
        return 1
    return 0
