"""`huiyun room token` and `huiyun peer`: video rooms from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from commons.settings import Settings, ensure_secret_key
from signaling.config import derive_token_key
from signaling.peer import PeerFailure
from signaling.peer_command import add_peer_arguments, command_from_args, run_peer
from signaling.tokens import issue_join_token

DEFAULT_TOKEN_TTL_SECONDS = 3600


def add_commands(subparsers: Any) -> None:
    """Add `room token ...` and `peer ...` to the huiyun CLI."""
    room = subparsers.add_parser("room", help="video rooms")
    actions = room.add_subparsers(dest="room_command", required=True, metavar="COMMAND")
    token = actions.add_parser(
        "token", help="print a join token for a room (for huiyun peer and carts)"
    )
    token.add_argument("--room", required=True, help="room name")
    token.add_argument("--peer", required=True, help="peer name shown in the room")
    token.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TOKEN_TTL_SECONDS,
        metavar="S",
        help=f"seconds the token stays valid (default {DEFAULT_TOKEN_TTL_SECONDS})",
    )
    peer = subparsers.add_parser(
        "peer", help="join a room as an aiortc peer (camera cart, network probe)"
    )
    add_peer_arguments(peer)


def run(args: argparse.Namespace, settings: Settings) -> int | None:
    """Run a `room` or `peer` command: its exit status, or None for others."""
    if args.command == "room" and args.room_command == "token":
        return _room_token(args, settings)
    if args.command == "peer":
        return _peer(args)
    return None


def _room_token(args: argparse.Namespace, settings: Settings) -> int:
    # the same key `huiyun serve` derives, read from the same data directory
    key = derive_token_key(ensure_secret_key(settings).secret_key)
    try:
        token = issue_join_token(
            key, room=args.room, peer=args.peer, ttl_seconds=args.ttl
        )
    except ValueError as exc:
        print(f"huiyun: error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _peer(args: argparse.Namespace) -> int:
    try:
        command = command_from_args(args)
    except ValueError as exc:
        print(f"huiyun: error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_peer(command))
    except PeerFailure as exc:
        print(f"huiyun peer: {exc}", file=sys.stderr)
        return 1
