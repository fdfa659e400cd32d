"""`orchestrator serve`: the status page, read-only, and /metrics (orchestrator.monitor.page).

`orchestrator metrics`: the same Prometheus exposition once, printed or written atomically
to a file (a cron job, or a look at what Prometheus would get).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import sys
from pathlib import Path

from orchestrator.records.rundir import existing, locate
from runtime.atomic import atomic_write_bytes
from runtime.errors import UserError

TOKEN_ENV = "ORCHESTRATOR_SERVE_TOKEN"
TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{16,200}")  # fits a header, a cookie and a URL as it is


def read_token(args) -> str | None:
    """--token-file, else --token, else $ORCHESTRATOR_SERVE_TOKEN (a file or the environment
    keeps the token out of `ps`, which shows a command line to every user)."""
    token, source = None, None
    if args.token_file:
        try:
            token, source = args.token_file.read_text().strip(), f"--token-file {args.token_file}"
        except OSError as e:
            raise UserError(f"--token-file {args.token_file}: {e.strerror}") from None
    elif args.token:
        token, source = args.token, "--token"
    elif os.environ.get(TOKEN_ENV):
        token, source = os.environ[TOKEN_ENV].strip(), TOKEN_ENV
    if token is not None and not TOKEN_RE.fullmatch(token):
        raise UserError(
            f"{source}: a token is 16 to 200 letters, digits, '.', '_', '~' or '-' (a random one: "
            f"{secrets.token_urlsafe(24)})"
        )
    return token


def cmd_serve(args) -> int:
    from orchestrator.monitor.page import StatusServer, is_loopback

    paths = existing(locate(args.run_dir, args.schedule))
    token = read_token(args)
    if token is None and not is_loopback(args.host):
        raise UserError(
            f"--host {args.host} opens the page to other machines: give it a token as well "
            f"(--token-file FILE, or ${TOKEN_ENV}; a random one: {secrets.token_urlsafe(24)}), "
            "or keep the default 127.0.0.1 and reach it through an SSH tunnel: "
            f"ssh -L {args.port or 8765}:127.0.0.1:{args.port or 8765} THIS-MACHINE (docs/operations.md)"
        )
    try:
        server = StatusServer((args.host, args.port), paths, token)
    except OSError as e:
        hint = " (another `orchestrator serve`? pick another --port)" if e.errno == errno.EADDRINUSE else ""
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}{hint}") from None
    print(f"serving {paths.root} at {server.url} (read-only; Ctrl-C stops)", flush=True)
    if token:
        print(f"open it once as {server.url}?token=TOKEN; Prometheus sends it as a bearer token", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_metrics(args) -> int:
    from orchestrator.monitor.metrics import exposition
    from orchestrator.monitor.view import lock_holder

    paths = existing(locate(args.run_dir, args.schedule))
    data = exposition(paths, lock_holder)
    if args.out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    atomic_write_bytes(out, data)
    return 0
