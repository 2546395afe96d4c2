"""Per-process cache of pipeline stages: they change rarely, and every event needs one."""

from __future__ import annotations

from sqlalchemy import Connection

from db import crm
from worker.errors import ConfigError


class StageCache:
    def __init__(self) -> None:
        self._stages: dict[str, crm.DefaultStage] = {}

    def get(self, conn: Connection, name: str) -> crm.DefaultStage:
        """The default pipeline's stage `name`; looked up again on a miss, never cached absent."""
        stage = self._stages.get(name)
        if stage is None:
            stage = crm.get_default_stage(conn, stage_name=name)
            if stage is None:
                raise ConfigError(f"no default pipeline with a stage named '{name}'")
            self._stages[name] = stage
        return stage

    def clear(self) -> None:
        self._stages.clear()
