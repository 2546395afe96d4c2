"""The console's actions (POST, admin, CSRF-checked): replay one, discard one, and replay all
that match a filter — a dry run first, then a confirmation that names the number, then a job
that replays every match (not only the page shown) while its page shows the progress. Each
action is recorded in admin_actions. The job's progress lives in Redis, so any receiver
process can show it; a job stopped by its receiver's shutdown records what it did and says
where it stopped (ReplayJobs). A second run matches nothing the first replayed (their status
changed), and the worker's durable guard would make a repeat harmless anyway."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from common.redis_clients import connect
from common.replay import WHAT_TO_DO, Actor, Outcome, Replayer, Summary
from common.settings import Settings
from db import console, dead_letters
from ingest.admin import dead_letter_id_of, replayer
from ingest.console import session as sessions
from ingest.console.pages import (
    FILTER_FIELDS,
    PAGE_SIZE,
    BadInput,
    dead_letter_filters,
    failure,
    page,
    query,
    render,
)
from ingest.console.session import Session, guarded

logger = logging.getLogger("crm.console")
action = guarded(admin=True, csrf=True, failure=failure)
_JOB_PREFIX = "crm:console:job:"
_JOB_TTL_SECONDS = 24 * 3600
_PROGRESS_EVERY = 25  # rows between two progress writes
# A running job writes its progress every _PROGRESS_EVERY replays and at least every 5 s;
# nothing for this long means the process running it is gone.
_STALE_SECONDS = 120


def _actor(session: Session) -> Actor:
    return Actor(session.sub, session.role, "console")


def _back(letter_id: int, done: str) -> Response:
    return RedirectResponse(f"/console/dead-letters/{letter_id}?done={done}", status_code=303)


@action
async def replay_one(request: Request, session: Session) -> Response:
    return await _act_on_one(request, session, "replay", Replayer.replay_one)


@action
async def discard_one(request: Request, session: Session) -> Response:
    return await _act_on_one(request, session, "discard", Replayer.discard)


async def _act_on_one(
    request: Request, session: Session, name: str, act: Callable[[Replayer, int], Outcome]
) -> Response:
    letter_id = dead_letter_id_of(request)
    if letter_id is None:
        return failure(request, 404, "No such dead letter", session)
    worker = replayer(request.app)
    outcome = await run_in_threadpool(act, worker, letter_id)
    if outcome.status == "skipped" and not await _exists(request, letter_id):
        return failure(request, 404, "No such dead letter", session)
    summary = Summary.of([outcome])
    await run_in_threadpool(worker.audit, _actor(session), name, [letter_id], summary)
    return _back(letter_id, outcome.status)


async def _exists(request: Request, letter_id: int) -> bool:
    found = await query(
        request, lambda conn: dead_letters.get_dead_letter(conn, dead_letter_id=letter_id)
    )
    return found is not None


@action
async def replay_matching(request: Request, session: Session) -> Response:
    form = await request.form()
    params = {name: str(form.get(name) or "") for name in FILTER_FIELDS}
    try:
        filters = dead_letter_filters(params)
    except BadInput as exc:
        return failure(request, 400, str(exc), session)
    open_ones = dataclasses.replace(filters, status="open")  # only an open one is replayed
    try:
        counts, preview = await query(
            request,
            lambda conn: (
                console.count_matching(conn, filters),
                console.dead_letter_page(conn, open_ones, limit=PAGE_SIZE),
            ),
        )
    except SQLAlchemyError:
        return failure(request, 503, "The database is unavailable; retry later", session)
    fields = [(name, value) for name, value in params.items() if value]
    expected = str(form.get("expected") or "")
    if form.get("step") != "run" or expected != str(counts["matched"]):
        # The dry run, and again whenever the matches changed since the admin confirmed.
        return render(
            request, "confirm.html", session, "Replay all that match", matched=counts["matched"],
            skipped=counts["skipped"], would_replay=counts["matched"] - counts["skipped"],
            filter_fields=fields, preview=preview, what_to_do=WHAT_TO_DO,
            notice="The matches changed since the dry run; check the number again."
            if expected else None,
        )  # fmt: skip
    ids = await query(request, lambda conn: dead_letters.matching_ids(conn, filters))
    job = _Job(id=uuid.uuid4().hex, total=len(ids))
    settings: Settings = request.app.state.settings
    client = connect(settings.redis, timeout=5)
    _save(client, job)
    run = _JobRun(replayer(request.app), client, job, ids, filters, _actor(session))
    _jobs(request.app).start(run.replay, name=f"console-replay-{job.id}")
    return RedirectResponse(f"/console/jobs/{job.id}", status_code=303)


@dataclass
class _Job:
    """A replay-all job as its page shows it (kept in Redis, so any receiver can show it)."""

    id: str
    total: int
    done: int = 0
    replayed: int = 0
    skipped: int = 0
    failed: int = 0
    state: str = "running"  # running | finished | stopped (its receiver shut down)
    updated_at: float = field(default_factory=time.time)
    failures: list[dict[str, object]] = field(default_factory=list)


def _save(client: redis.Redis, job: _Job) -> None:
    job.updated_at = time.time()
    client.set(_JOB_PREFIX + job.id, json.dumps(asdict(job)), ex=_JOB_TTL_SECONDS)


def _save_quietly(client: redis.Redis, job: _Job) -> None:
    with contextlib.suppress(RedisError):  # the page then shows older progress; it goes on
        _save(client, job)


class ReplayJobs:
    """The replay-all jobs this receiver process runs, each in a thread of its own. When the
    receiver shuts down (a deploy, crm-run's Ctrl-C) each stops after the dead letter in hand,
    records in admin_actions what it did, and its page says where it stopped; what it did not
    reach is still open, so "replay all that match" again goes on from there."""

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def start(self, run: Callable[[threading.Event], None], *, name: str) -> None:
        def main() -> None:
            try:
                run(self._stopping)
            finally:
                with self._lock:
                    self._threads.discard(thread)

        thread = threading.Thread(target=main, name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            running = list(self._threads)
        for thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))


def _jobs(app: Starlette) -> ReplayJobs:
    jobs: ReplayJobs | None = getattr(app.state, "console_jobs", None)
    if jobs is None:
        jobs = app.state.console_jobs = ReplayJobs()
    return jobs


def stop_jobs(app: Starlette, timeout: float = 10.0) -> None:
    jobs: ReplayJobs | None = getattr(app.state, "console_jobs", None)
    if jobs is not None:
        jobs.stop(timeout)


@dataclass
class _JobRun:
    worker: Replayer
    client: redis.Redis
    job: _Job
    ids: list[int]
    filters: dead_letters.Filters
    actor: Actor

    def replay(self, stopping: threading.Event) -> None:
        job, outcomes = self.job, []
        try:
            for dead_letter_id in self.ids:
                if stopping.is_set():
                    job.state = "stopped"
                    break
                outcome = self.worker.replay_one(dead_letter_id)
                outcomes.append(outcome)
                job.done = len(outcomes)
                setattr(job, outcome.status, getattr(job, outcome.status) + 1)
                if outcome.status == "failed":
                    job.failures.append({"id": dead_letter_id, "reason": outcome.detail})
                if job.done % _PROGRESS_EVERY == 0 or time.time() - job.updated_at > 5:
                    _save_quietly(self.client, job)
            self.worker.audit(
                self.actor, "replay_matching", self.ids[: job.done], Summary.of(outcomes),
                filters=self.filters,
                stopped_of=len(self.ids) if job.state == "stopped" else None,
            )  # fmt: skip
        finally:
            if job.state == "running":
                job.state = "finished"
            _save_quietly(self.client, job)
            self.client.close()


@page
async def job_page(request: Request, session: Session) -> Response:
    job_id = request.path_params["job_id"]
    client = request.app.state.ready_clients["redis"]
    raw = await client.get(_JOB_PREFIX + job_id) if job_id.isalnum() else None
    if raw is None:
        return failure(request, 404, "No such replay (they are kept for a day)", session)
    job: dict[str, Any] = json.loads(raw)
    # A record written before jobs had a state (kept a day) says only whether it finished.
    job.setdefault("state", "finished" if job.get("finished") else "running")
    if (
        job["state"] == "running"
        and time.time() - job.get("updated_at", time.time()) > _STALE_SECONDS
    ):
        job["state"] = "lost"  # its receiver was killed outright: nothing can say more
    return render(
        request, "job.html", session, "Replay all that match", job=job,
        refresh=1 if job["state"] == "running" else None,
    )  # fmt: skip


async def sign_in(request: Request) -> Response:
    token = request.query_params.get("token", "")
    try:
        return await sessions.sign_in(request, token)
    except sessions.LinkRefused as exc:
        reason = str(exc)
    except RedisError:
        return sessions.secure(failure(request, 503, "Redis is unavailable; retry later", None))
    response = render(
        request, "message.html", None, "Sign-in link refused", 401,
        message=f"This sign-in link cannot be used: {reason}. Links work once, for a few "
        "minutes.", signed_out=True,
    )  # fmt: skip
    return sessions.secure(response)


@action
async def sign_out_everywhere(request: Request, session: Session) -> Response:
    """End every console session, this one included (an admin's; the cookie goes too)."""
    await sessions.revoke_all(request)
    logger.warning("console: %s signed every session out", session.sub)
    response = RedirectResponse("/console", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/console")
    return response


async def sign_out(request: Request) -> Response:
    current = await sessions.current(request)
    if current is None:
        return sessions.secure(RedirectResponse("/console", status_code=303))
    form = await request.form()
    if not sessions.csrf_ok(current, form.get("csrf")):
        return sessions.secure(
            failure(request, 403, "The form's CSRF token is missing or wrong", current)
        )
    await sessions.sign_out(request)
    response = RedirectResponse("/console", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/console")
    return sessions.secure(response)
