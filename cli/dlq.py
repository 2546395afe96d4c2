"""`crm-dlq`: list, inspect, replay and discard dead letters; rescue parked events.

Exit codes: 0 all went well, 1 something failed or was not found, 2 bad usage.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from common.redis_clients import connect
from common.replay import ANY_STATUS, Actor, Outcome, Replayer, Summary, filters_from
from common.senders import SENDERS
from common.settings import SettingsError, load_settings
from db import dead_letters
from db.engine import make_engine
from db.tables import DEAD_LETTER_STATUSES

_COLUMNS = ("id", "status", "reason", "provider", "event_type", "attempts", "last_failed_at")


def _add_filters(parser: argparse.ArgumentParser, *, status_help: str) -> None:
    parser.add_argument("--provider", help=f"only this sender: {', '.join(SENDERS)}")
    parser.add_argument("--reason", help="only this reason, e.g. config_error")
    parser.add_argument("--status", choices=(*DEAD_LETTER_STATUSES, ANY_STATUS), help=status_help)
    parser.add_argument("--since", help="last failure at or after this ISO 8601 time")
    parser.add_argument("--until", help="last failure before this ISO 8601 time")
    parser.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crm-dlq",
        description="Events that could not be processed wait in the dead-letter store. List and "
        "inspect them, replay them onto the normal queue once the cause is fixed, or discard "
        "them. Exit codes: 0 ok, 1 something failed, 2 bad usage.",
    )
    parser.add_argument(
        "--as",
        dest="actor",
        default=getpass.getuser(),
        metavar="NAME",
        help="who acts, for the audit trail of replays and discards (default: your user name)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list dead letters (default: the open ones)")
    _add_filters(listing, status_help="open (default), replayed, discarded or all")
    listing.add_argument("--json", action="store_true", help="one JSON document on stdout")

    show = commands.add_parser("show", help="one dead letter: envelope, error, traceback")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true", help="one JSON document on stdout")

    replay = commands.add_parser(
        "replay", help="put dead letters' original envelopes back on the queue"
    )
    replay.add_argument("ids", type=int, nargs="*", metavar="ID")
    replay.add_argument("--all", action="store_true", help="every dead letter the filters match")
    _add_filters(replay, status_help="with --all: open (default), replayed, discarded or all")
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="say what the replay would do, row by row, and change nothing",
    )

    discard = commands.add_parser("discard", help="take dead letters off the open list")
    discard.add_argument("ids", type=int, nargs="+", metavar="ID")

    commands.add_parser(
        "rescue",
        help="move events parked in Redis (PostgreSQL refused even their dead letter) into "
        "the dead-letter store",
    )
    return parser


_ERROR_WIDTH = 60


def _print_table(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        print("no dead letters match")
        return
    header = [*_COLUMNS, "error"]
    table = [header] + [[*(str(row[c]) for c in _COLUMNS), _error_cell(row)] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]).rstrip())


def _error_cell(row: dict[str, Any]) -> str:
    text = f"{row['error_class']}: {row['error_message']}".replace("\n", " ")
    return text if len(text) <= _ERROR_WIDTH else text[: _ERROR_WIDTH - 1] + "…"


def _shown(row: dict[str, Any]) -> str:
    """A dead letter for a person: its fields, the envelope as indented JSON, and the traceback
    as the lines Python wrote (JSON would make it one escaped string)."""
    fields = [f"{key:<15} {value}" for key, value in row.items() if key not in _LONG_FIELDS]
    envelope = json.dumps(row.get("envelope"), indent=2)
    trace = row.get("traceback") or "(none)"
    return "\n".join([*fields, "envelope:", envelope, "traceback:", trace.rstrip()])


_LONG_FIELDS = ("envelope", "traceback")


def _replay(
    args: argparse.Namespace, replayer: Replayer, filters: dead_letters.Filters, actor: Actor
) -> int:
    if args.all and args.ids:
        print("crm-dlq replay: give dead letter IDs or --all, not both", file=sys.stderr)
        return 2
    if not args.all and not args.ids:
        print(
            "crm-dlq replay: say which: dead letter IDs, or --all for every one the filters "
            "match (see crm-dlq list)",
            file=sys.stderr,
        )
        return 2
    ids: list[int] = replayer.matching(filters) if args.all else args.ids
    would = "would be " if args.dry_run else ""
    replayed: list[int] = []

    def progress(position: int, outcome: Outcome) -> None:
        if outcome.status == "replayed":
            replayed.append(outcome.dead_letter_id)
        line = f"[{position}/{len(ids)}] dead letter {outcome.dead_letter_id}: {would}"
        print(f"{line}{outcome.status} {outcome.detail}".rstrip(), flush=True)

    summary = replayer.replay_many(ids, progress, dry_run=args.dry_run)
    if args.dry_run:  # changes nothing, so no record in the audit trail
        listed = " ".join(map(str, replayed)) or "-"
        print(
            f"dry run: {summary.replayed} dead letter(s) would be replayed: {listed}; "
            f"{summary.skipped} skipped, {summary.failed} failed"
        )
    else:
        if args.all:
            replayer.audit(actor, "replay_matching", ids, summary, filters=filters)
        else:
            replayer.audit(actor, "replay", ids, summary)
        print(f"replayed {summary.replayed}, skipped {summary.skipped}, failed {summary.failed}")
    for failure in summary.failures:
        print(
            f"crm-dlq: dead letter {failure['id']} {would}failed: {failure['reason']}",
            file=sys.stderr,
        )
    # Named IDs that were not there are a failure of the request; --all matched what exists.
    # A dry run exits as the real run would.
    return 1 if summary.failed or (args.ids and summary.skipped) else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        options = ("provider", "reason", "status", "since", "until", "limit")
        filters = filters_from({k: getattr(args, k, None) for k in options}, default_status="open")
    except (SettingsError, ValueError) as exc:
        print(f"crm-dlq: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings.pg_url(), pool_size=1, application_name="crm-dlq")
    client = connect(settings.broker, timeout=10)
    try:
        with engine.connect() as conn:
            if args.command == "list":
                rows = dead_letters.list_dead_letters(conn, filters)
                if args.json:
                    print(json.dumps(rows, indent=2))
                else:
                    _print_table(rows)
                return 0
            if args.command == "show":
                row = dead_letters.get_dead_letter(conn, dead_letter_id=args.id)
                if row is None:
                    print(f"crm-dlq: no dead letter {args.id}", file=sys.stderr)
                    return 1
                print(json.dumps(row, indent=2) if args.json else _shown(row))
                return 0
        replayer = Replayer(engine, client, settings.broker_visibility_timeout)
        actor = Actor(args.actor, "operator", "cli")
        if args.command == "rescue":
            moved, left = replayer.rescue()
            print(f"moved {moved} parked event(s) into the dead-letter store; {left} left parked")
            return 1 if left else 0
        if args.command == "discard":
            outcomes = [replayer.discard(dead_letter_id) for dead_letter_id in args.ids]
            missing = [o.dead_letter_id for o in outcomes if o.status == "skipped"]
            failed = [o.dead_letter_id for o in outcomes if o.status == "failed"]
            replayer.audit(actor, "discard", list(args.ids), Summary.of(outcomes))
            print(f"discarded {len(args.ids) - len(missing) - len(failed)}")
            if missing:
                print(f"crm-dlq: not found or already discarded: {missing}", file=sys.stderr)
            if failed:
                print(f"crm-dlq: could not discard (database): {failed}", file=sys.stderr)
            return 1 if missing or failed else 0
        return _replay(args, replayer, filters, actor)
    except SQLAlchemyError as exc:
        where = f"{settings.pg_host}:{settings.pg_port}"
        print(
            f"crm-dlq: PostgreSQL at {where} failed ({type(exc).__name__}); "
            "check PG_HOST, PG_PORT, PG_DATABASE, PG_USER, PG_PASSWORD and that it runs",
            file=sys.stderr,
        )
        return 1
    except RedisError as exc:
        print(
            f"crm-dlq: Redis failed ({type(exc).__name__}: {exc}); "
            "check CELERY_BROKER_URL / REDIS_URL and that it runs",
            file=sys.stderr,
        )
        return 1
    finally:
        client.close()
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
