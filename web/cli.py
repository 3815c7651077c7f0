"""The `huiyun` command line."""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from commons import identity, stations
from commons.audit import Actor, record
from commons.db import Database, DatabaseUnavailable, open_database
from commons.errors import HuiyunError
from commons.settings import Settings, SettingsError, ensure_secret_key, load_settings

logger = logging.getLogger(__name__)

# feature packages add their own sub-commands through these modules
PLUGIN_MODULES = ("web.cli_signaling", "web.cli_school")


class CommandError(Exception):
    """A failure to report as one line on stderr with a non-zero exit."""


def build_parser(plugins: Sequence[ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="huiyun",
        description="huiyun (会孕): remote consultation and online pregnancy school.",
    )
    parser.add_argument("--data-dir", help="data directory (HUIYUN_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the platform")
    serve.add_argument("--host", help="address to bind (HUIYUN_HOST)")
    serve.add_argument("--port", type=int, help="port to bind (HUIYUN_PORT)")
    serve.add_argument("--data-dir", dest="serve_data_dir", help="data directory")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="seed one demo account per role and print them",
    )

    commands.add_parser("config", help="print the effective settings, secrets masked")

    station_cmd = commands.add_parser("stations", help="import or export stations")
    station_actions = station_cmd.add_subparsers(dest="action", required=True)
    station_actions.add_parser(
        "import", help="load a division CSV, all or nothing"
    ).add_argument("file", type=Path)
    station_actions.add_parser("export", help="write the stations as CSV").add_argument(
        "file", type=Path
    )

    users = commands.add_parser("users", help="manage accounts")
    user_actions = users.add_subparsers(dest="action", required=True)
    create = user_actions.add_parser("create", help="create an account")
    create.add_argument("--username", required=True)
    create.add_argument(
        "--role", required=True, choices=[str(r) for r in identity.Role]
    )
    create.add_argument("--station", help="station code (clinicians and experts)")
    create.add_argument("--display-name", default="")
    create.add_argument("--specialties", default="", help="comma-separated")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from standard input",
    )

    token = commands.add_parser("token", help="personal API tokens")
    token_actions = token.add_subparsers(dest="action", required=True)
    token_create = token_actions.add_parser("create", help="print a new API token")
    token_create.add_argument("--username", required=True)
    token_create.add_argument("--name", default="command line")

    commands.add_parser(
        "backup", help="dump the database (mongodump layout)"
    ).add_argument("dir", type=Path)
    restore = commands.add_parser(
        "restore", help="load a dump made by backup or mongodump"
    )
    restore.add_argument("dir", type=Path)
    restore.add_argument(
        "--drop", action="store_true", help="empty each collection before loading it"
    )

    for plugin in plugins:
        plugin.add_commands(commands)
    return parser


def load_plugins() -> list[ModuleType]:
    found = []
    for name in PLUGIN_MODULES:
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            # a plugin not written yet is skipped; one that fails to import
            # its own dependencies must say so, not lose its commands quietly
            if exc.name != name:
                raise
    return found


def main(argv: Sequence[str] | None = None) -> int:
    plugins = load_plugins()
    args = build_parser(plugins).parse_args(argv)
    try:
        settings = _settings(args)
        _configure_logging(settings)
        for plugin in plugins:
            result = plugin.run(args, settings)
            if result is not None:
                return int(result)
        return COMMANDS[args.command](args, settings)
    except (CommandError, SettingsError, DatabaseUnavailable) as exc:
        print(f"huiyun: error: {exc}", file=sys.stderr)
        return 2
    except HuiyunError as exc:
        print(f"huiyun: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _settings(args: argparse.Namespace) -> Settings:
    data_dir = getattr(args, "serve_data_dir", None) or args.data_dir
    overrides: dict[str, Any] = {
        "data_dir": data_dir,
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
    }
    return load_settings(overrides)


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # the driver's own chatter is not ours to print at info
    logging.getLogger("pymongo").setLevel(logging.WARNING)


def _with_database(
    settings: Settings, work: Callable[[Database], Awaitable[int]]
) -> int:
    async def run() -> int:
        database = await open_database(settings)
        try:
            await database.ensure_indexes((*stations.INDEXES, *identity.INDEXES))
            return await work(database)
        finally:
            await database.close()

    return asyncio.run(run())


# serve


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from web.server import run_server

    listener = _bind(settings.host, settings.port)
    settings = ensure_secret_key(settings)
    return asyncio.run(run_server(settings, listener, demo=args.demo))


def _bind(host: str, port: int) -> socket.socket:
    """Take the port before anything else starts, so a busy port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise CommandError(
                f"port {port} on {host} is already in use; stop the "
                "other server or pass --port"
            ) from None
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener.listen(512)
    return listener


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    from commons.settings import OPTIONS

    shown = settings.masked()
    for option in OPTIONS:
        print(f"{option.env_var}={shown[option.name]}")
    return 0


# stations


def cmd_stations(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "import":
        try:
            data = args.file.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {args.file}: {exc.strerror}") from None

        async def do_import(database: Database) -> int:
            try:
                result = await stations.import_stations(database, data)
            except stations.StationFileError as exc:
                for error in exc.errors:
                    print(f"{args.file}:{error.line}: {error.message}", file=sys.stderr)
                print(
                    f"huiyun: error: {len(exc.errors)} bad line(s); nothing was "
                    "imported",
                    file=sys.stderr,
                )
                return 1
            await record(
                database,
                Actor.system("cli"),
                "stations.imported",
                object_kind="stations",
                object_id=str(args.file.name),
                detail={"created": result.created, "updated": result.updated},
            )
            print(
                f"imported: {result.created} created, {result.updated} updated, "
                f"{result.unchanged} unchanged"
            )
            return 0

        return _with_database(settings, do_import)

    async def do_export(database: Database) -> int:
        text = stations.to_csv((await stations.load_all(database)).values())
        try:
            args.file.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.file}: {exc.strerror}") from None
        print(f"exported {text.count(chr(10)) - 1} stations to {args.file}")
        return 0

    return _with_database(settings, do_export)


# accounts and tokens


def cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError(
            "no password on standard input; pipe it in, e.g. "
            "`printf '%s' \"$PW\" | huiyun users create ...`"
        )

    async def create(database: Database) -> int:
        await stations.seed_if_empty(database)
        specialties = tuple(s.strip() for s in args.specialties.split(",") if s.strip())
        try:
            user = await identity.create_user(
                database,
                username=args.username,
                password=password,
                role=args.role,
                station_code=args.station,
                display_name=args.display_name,
                specialties=specialties,
            )
        except HuiyunError as exc:
            fields = getattr(exc, "field_errors", None)
            message = (
                "; ".join(f"{k}: {v}" for k, v in fields.items())
                if fields
                else exc.message
            )
            raise CommandError(message) from None
        await record(
            database,
            Actor.system("cli"),
            "account.created",
            object_kind="account",
            object_id=user.id,
        )
        print(f"created {user.role} {user.username} id={user.id}")
        return 0

    return _with_database(settings, create)


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    async def create(database: Database) -> int:
        user = await identity.find_by_username(database, args.username)
        if user is None:
            raise CommandError(f"no account with username {args.username!r}")
        token_id, token = await identity.create_api_token(database, user.id, args.name)
        await record(
            database,
            Actor.system("cli"),
            "token.created",
            object_kind="api_token",
            object_id=token_id,
        )
        print(token)
        return 0

    return _with_database(settings, create)


# backup


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from commons import backup

    async def dump(database: Database) -> int:
        counts = await backup.dump(database, args.dir)
        print(
            f"backed up {sum(counts.values())} documents in {len(counts)} "
            f"collections to {args.dir}"
        )
        return 0

    return _with_database(settings, dump)


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from commons import backup

    async def load(database: Database) -> int:
        try:
            counts = await backup.restore(database, args.dir, drop=args.drop)
        except backup.BackupError as exc:
            raise CommandError(str(exc)) from None
        print(f"restored {sum(counts.values())} documents in {len(counts)} collections")
        return 0

    return _with_database(settings, load)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "serve": cmd_serve,
    "config": cmd_config,
    "stations": cmd_stations,
    "users": cmd_users,
    "token": cmd_token,
    "backup": cmd_backup,
    "restore": cmd_restore,
}


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


if __name__ == "__main__":
    sys.exit(main())
