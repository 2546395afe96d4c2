"""A sender is one module: nothing outside it names the sender, its event types or its settings,
so adding a sender is adding its module (with fixtures and tests). Also what the registry gives
every sender alike: a documented table, delivery helpers that pass its own authentication, and
the README's table of events."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.senders import SENDERS, events_table, setup_table
from common.senders.kit import Sender
from common.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
# The service's code. Not here: the senders' own modules; alembic/ (history, frozen as it was
# written); bench/ and tests/, which are clients posting particular senders' deliveries.
CORE = ("cli", "common", "db", "ingest", "worker")


def _core_files() -> Iterator[Path]:
    own = {ROOT / "common" / "senders" / f"{name}.py" for name in SENDERS}
    for package in CORE:
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix in (".py", ".html") and path not in own:
                yield path


def _words(sender: Sender) -> set[str]:
    """What names the sender: its name and title, and the settings only it has."""
    settings = {sender.secret_setting, sender.duplicate_status_setting}
    settings |= {option.env for option in sender.options.values()}
    return {sender.name, sender.title} | settings


def _event_types(sender: Sender) -> set[str]:
    return set(sender.effects) | set(sender.aliases)


def _texts(path: Path) -> Iterator[tuple[int, str]]:
    """Every string literal, identifier and comment in a Python file; each line of a template."""
    source = path.read_text()
    if path.suffix != ".py":
        yield from enumerate(source.splitlines(), 1)
        return
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        elif isinstance(node, ast.Name):
            yield node.lineno, node.id
        elif isinstance(node, ast.Attribute):
            yield node.lineno, node.attr
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.lineno, node.name
        elif isinstance(node, ast.alias):
            yield node.lineno, node.asname or node.name
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string


def test_nothing_outside_a_senders_module_names_it_or_its_event_types() -> None:
    found = []
    for path in _core_files():
        for line, value in _texts(path):
            for name, sender in SENDERS.items():
                for word in _words(sender):
                    # A word of its own: `calcom` in `calcom_x` too, not inside another word.
                    if re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", value, re.I):
                        found.append(f"{path.relative_to(ROOT)}:{line}: {name} ({word})")
                for event_type in _event_types(sender):
                    if re.search(rf"(?<![\w.]){re.escape(event_type)}(?![\w.])", value):
                        found.append(f"{path.relative_to(ROOT)}:{line}: {name} ({event_type})")
    assert not found, "a sender named outside its module:\n" + "\n".join(sorted(set(found)))


def test_the_check_finds_a_sender_named_in_core_code(tmp_path: Path) -> None:
    """The check above would fail on what this issue found: a provider-keyed dict."""
    sample = tmp_path / "sample.py"
    sample.write_text('HANDLERS = {"calcom": handle}  # and a comment naming Smartlead\n')
    values = [value for _, value in _texts(sample)]
    assert "calcom" in values
    assert any("Smartlead" in value for value in values)


@pytest.mark.parametrize("name", sorted(SENDERS))
def test_a_sender_is_complete(name: str) -> None:
    sender = SENDERS[name]
    assert re.fullmatch(r"[a-z][a-z0-9]*", sender.name)
    assert sender.effects, "an effects table"
    for event_type, effect in sender.effects.items():
        assert effect.why, f"{event_type}: the table says why"
    for alias, canonical in sender.aliases.items():
        assert canonical in sender.effects, alias
    assert sender.lead_email_paths and sender.setup and sender.auth_doc


@pytest.mark.parametrize("name", sorted(SENDERS))
def test_what_a_sender_delivers_passes_its_own_authentication(name: str) -> None:
    sender = SENDERS[name]
    settings = load_settings({})
    options = settings.sender_option(name)
    secret = settings.webhook_secrets(name)[0].get()
    event = sender.smoke_event("run-1", "ada@example.com")
    body, headers = sender.deliver(event, secret, int(__import__("time").time()))
    lookup = _Headers(headers)
    assert sender.authenticate(lookup, body, [secret], options) is None
    assert sender.authenticate(lookup, body, ["another-secret-entirely"], options) is not None
    assert sender.authenticate(_Headers({}), b"{}", [secret], options) == "no_credentials"


class _Headers:
    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = {key.lower(): value for key, value in headers.items()}

    def getlist(self, key: str) -> list[str]:
        value = self._headers.get(key.lower())
        return [] if value is None else [value]


@pytest.mark.parametrize("table", [setup_table, events_table], ids=lambda table: table.__name__)
def test_the_readme_tables_are_the_registrys(table: Callable[[], str]) -> None:
    readme = (ROOT / "README.md").read_text()
    assert table() in readme, "README.md: paste `python -m common.senders`"
