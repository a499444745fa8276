"""``n2i-stream config``: check and show the service settings, make CURVE keys.

::

    n2i-stream config check FILE [--environment] [--set SECTION.KEY=VALUE ...]
    n2i-stream config show [FILE] [--json] [--set ...]
    n2i-stream config keys DIR [--client NAME ...]

``check`` validates without starting anything: exit 0 when the file is valid (warnings about
risky but valid choices go to standard error), 2 with every problem otherwise.
``--environment`` also checks this machine: key files readable, directories writable, optional
dependencies installed. ``show`` prints the effective settings (file, environment and
``--set`` applied). :func:`add_settings_arguments` and :func:`settings_from_args` give other
commands (``serve``) the same ``--config``/``--set`` options.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "check or show the service settings (TOML), make CURVE keys"


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set SECTION.KEY=VALUE``."""
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="settings file (TOML; $N2I_STREAM_CONFIG)"
    )
    _add_set(parser)


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        dest="settings",
        help="override one setting (a TOML value, else a string); repeatable",
    )


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["data.bind=false", ...]`` → ``{"data.bind": False, ...}`` (ConfigError if malformed)."""
    from ..errors import ConfigError
    from ..settings import parse_value

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        out[key.strip()] = parse_value(value.strip())
    return out


def settings_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Any:
    """The :class:`~n2i_stream.settings.ServiceSettings` of ``--config`` and ``--set``;
    ``extra`` (``{"section.key": value}``, e.g. from a command's own flags) is applied first,
    so ``--set`` wins."""
    from ..settings import load_settings

    overrides = {**(extra or {}), **parse_sets(getattr(args, "settings", []))}
    return load_settings(getattr(args, "config", None), overrides=overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a settings file without starting")
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument(
        "--environment",
        action="store_true",
        help="also check this machine: key files, directories, optional dependencies",
    )
    _add_set(check)
    show = actions.add_parser("show", help="print the effective settings")
    show.add_argument("file", type=Path, nargs="?", metavar="FILE")
    show.add_argument("--json", action="store_true", help="JSON instead of TOML")
    _add_set(show)
    keys = actions.add_parser("keys", help="make ZeroMQ CURVE key pairs for server and clients")
    keys.add_argument("directory", type=Path, metavar="DIR")
    keys.add_argument(
        "--client",
        action="append",
        dest="clients",
        metavar="NAME",
        help="a client key pair to make and authorise (repeatable; default: client)",
    )
    keys.add_argument("--overwrite", action="store_true", help="replace existing keys")


def run(args: argparse.Namespace) -> int:
    if args.action == "keys":
        return _keys(args)
    from ..settings import environment_problems, load_settings, settings_warnings, to_toml

    settings = load_settings(args.file, overrides=parse_sets(args.settings))
    if args.action == "show":
        text = json.dumps(settings.mapping(), indent=2) + "\n" if args.json else to_toml(settings)
        sys.stdout.write(text)
        return 0
    for warning in settings_warnings(settings):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    problems = environment_problems(settings) if args.environment else []
    for problem in problems:
        print(f"{args.file}: error: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.file}: ok")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from ..io.curve import generate_keys

    files = generate_keys(
        args.directory, clients=tuple(args.clients or ("client",)), overwrite=args.overwrite
    )
    print(f"server key pair: {files.server_secret} (public: {files.server_public})")
    for name, path in files.clients.items():
        print(f"client {name!r}: {path} (authorised in {files.authorized})")
    print(
        "settings: [security] server_secret_key = "
        f'"{files.server_secret}", authorized_keys = "{files.authorized}"'
    )
    return 0
