"""The README and docs link only to files of the repository, and every one is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.senders import SENDERS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


@pytest.mark.parametrize("document", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_links_stay_inside_the_repository_and_resolve(document: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        resolved = (document.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{document.name} links outside: {target}"
        assert resolved.exists(), f"{document.name} links to a missing file: {target}"


def test_every_setting_is_in_the_readmes_configuration_section() -> None:
    """What common/settings.py reads, the README names (its table, or the sentence after it
    that sends the tuning and test-only ones to docs/OPERATIONS.md)."""
    source = (ROOT / "common" / "settings.py").read_text()
    read = set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', source))
    for sender in SENDERS.values():  # each sender's module names its own settings
        read |= {sender.secret_setting, sender.duplicate_status_setting}
        read |= {option.env for option in sender.options.values()}
    assert {"APP_ENV", "REDIS_URL", "TASK_MAX_WORKER_LOST", "PG_LOCK_TIMEOUT_MS"} <= read
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = sorted(name for name in read if f"`{name}`" not in section)
    assert not missing, f"settings the README's configuration section does not name: {missing}"
