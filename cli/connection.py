"""What every client verb shares: the --url/--key options, the client they open, and how errors are shown.

A verb handler takes (args, client) and returns an exit code. `run_verb` opens the
client, runs the handler and turns every ClientError into one line on stderr with
the server's code and message (never a traceback): connection refused included.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from client import DEFAULT_URL, KEY_ENV, URL_ENV, ClientError, DistillClient

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_ERROR = 2  # the request itself failed (bad input, unknown job, no server), as argparse's usage errors
EXIT_JOB_CANCELLED = 3
EXIT_DETACHED = 130  # Ctrl-C: the shell convention for "interrupted"

Handler = Callable[[argparse.Namespace, DistillClient], int]


def connection_options() -> argparse.ArgumentParser:
    """A parent parser: every client verb takes --url and --key (or their environment variables)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument("--url", default=None, help=f"service URL (default ${URL_ENV}, else {DEFAULT_URL})")
    group.add_argument("--key", default=None, help=f"API key (default ${KEY_ENV}); sent as a bearer token")
    return options


def add_verb(commands: argparse._SubParsersAction, name: str, handler: Handler, help: str,
             **kwargs: object) -> argparse.ArgumentParser:
    """A subcommand that runs `handler` with a connected client."""
    parser = commands.add_parser(name, help=help, description=help, parents=[connection_options()], **kwargs)
    parser.set_defaults(client_handler=handler)
    return parser


def print_error(error: ClientError) -> None:
    print(f"distill: error: {error}", file=sys.stderr)


def run_verb(args: argparse.Namespace) -> int:
    handler: Handler = args.client_handler
    try:
        with DistillClient(args.url, args.key) as client:
            return handler(args, client)
    except ClientError as error:
        print_error(error)
        return EXIT_ERROR
