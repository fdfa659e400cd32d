"""`python -m orchestrator.monitor.notify`: send one event as a notification through apprise.

An apprise hook runs this as its subprocess (orchestrator.monitor.hooks), so a notifier
stuck on the network is killed by the hook's timeout like any command. The event comes on
stdin (JSON), the URLs in ORCHESTRATOR_APPRISE_URLS, one a line (not in argv: `ps` shows
argv to every user, and the URLs hold tokens). Exit 0 when every URL took it, 1 otherwise,
with apprise's complaint on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys

# How the notification looks on the phone: apprise's types pick the icon and colour.
FAILURE = {"part-failed", "chain-failed", "daemon-fault", "release-failed", "chain-blocked", "worker-hung"}
WARNING = {"guard-pause", "guard-stop", "worker-paused", "worker-failed", "schedule-refused", "checkpoint-damaged"}
SUCCESS = {"part-done", "chain-done", "release-done", "guard-resume", "chain-unblocked"}


def title(event: dict) -> str:
    return f"{event.get('chain') or 'orchestrator'}: {event.get('event', 'event')}"


def main() -> int:
    try:
        import apprise
    except ImportError:
        print("apprise is not installed: pip install 'gpt-orchestrator[notify]'", file=sys.stderr)
        return 1
    try:
        event = json.loads(sys.stdin.read())
    except ValueError as e:
        print(f"the event on stdin is not JSON: {e}", file=sys.stderr)
        return 1
    urls = [u for u in os.environ.get("ORCHESTRATOR_APPRISE_URLS", "").splitlines() if u.strip()]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")  # apprise says why here
    notifier = apprise.Apprise()
    bad = [u.split("://", 1)[0] + "://..." for u in urls if not notifier.add(u)]
    if bad:
        print(f"apprise does not understand {', '.join(bad)}", file=sys.stderr)
    name = event.get("event")
    kind = (
        apprise.NotifyType.FAILURE
        if name in FAILURE
        else apprise.NotifyType.WARNING
        if name in WARNING
        else apprise.NotifyType.SUCCESS
        if name in SUCCESS
        else apprise.NotifyType.INFO
    )
    sent = len(notifier) > 0 and notifier.notify(
        title=title(event), body=str(event.get("message") or name), notify_type=kind
    )
    if not sent:
        print("apprise could not deliver the notification (see above)", file=sys.stderr)
    return 0 if sent and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
