"""`crm-run` as an operator runs it: a receiver and a worker, supervised."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.stack import ROOT
from tests.helpers import wait_for
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.e2e

CRM_RUN = str(Path(sys.executable).with_name("crm-run"))


class Run:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            [CRM_RUN, "--skip-migrate"], env=env, cwd=ROOT, stdout=self._out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self, name: str) -> list[int]:
        pid = self.popen.pid
        found = []
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            if name in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(child))
        return found

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout=60)
        self._out.close()
        return code


@pytest.fixture
def run_env(stack_env: dict[str, str], redis_server: RedisServer) -> Iterator[dict[str, str]]:
    yield stack_env | {"REDIS_URL": redis_server.db_url(6), "INGEST_PORT": str(free_port())}


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_a_worker_that_dies_is_restarted_while_the_receiver_keeps_answering(
    run_env: dict[str, str], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{run_env['INGEST_PORT']}"
    run = Run(run_env, tmp_path / "crm-run.log")
    try:
        wait_for(lambda: _healthy(url), timeout=60, message="the receiver did not come up")
        wait_for(lambda: run.output().count(" ready.") == 1, timeout=60, message="no worker")
        # Said once at start: where to point the senders, and (outside production) with what.
        assert run.output().count(f"Instantly webhook: {url}/webhooks/instantly") == 1
        assert f"Cal.com webhook:   {url}/webhooks/calcom" in run.output()
        assert "HMAC_SHARED_SECRET_CALCOM=test-calcom-secret" in run.output()
        assert "crm-token --sub" in run.output()
        [worker] = run.children("celery")
        os.kill(worker, signal.SIGKILL)

        def restarted() -> bool:
            assert _healthy(url), "the receiver stopped answering"
            return run.output().count(" ready.") == 2

        wait_for(restarted, timeout=60, interval=0.2, message="the worker was not restarted")
        assert "crm-run: worker exited with code -9" in run.output()
        assert "restarting it in 1 s" in run.output()
        assert run.popen.poll() is None
    finally:
        code = run.stop()
    assert code == 0


def test_a_taken_port_stops_crm_run_before_it_starts_anything_with_one_line(
    run_env: dict[str, str], tmp_path: Path
) -> None:
    port = run_env["INGEST_PORT"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(port)))
        taken.listen()
        run = Run(run_env, tmp_path / "crm-run.log")
        try:
            code = run.popen.wait(timeout=60)
        finally:
            run.stop()  # a hung crm-run must not outlive the test
    assert code == 1
    [line] = run.output().splitlines()
    assert line.startswith(f"crm-run: port {port} on 127.0.0.1 is in use by ")
    assert f"(pid {os.getpid()})" in line  # this test holds it, and /proc says so
    assert line.endswith("is crm-run already running? (or set INGEST_PORT)")


def test_ctrl_c_stops_everything_with_one_line_each_and_json_on_stdout(
    run_env: dict[str, str], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{run_env['INGEST_PORT']}"
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # A session of its own, as a terminal gives it: Ctrl-C goes to its whole group.
        run = subprocess.Popen(
            [CRM_RUN, "--skip-migrate"], env=run_env | {"LOG_FORMAT": "json"}, cwd=ROOT,
            stdout=stdout, stderr=stderr, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(lambda: _healthy(url), timeout=60, message="the receiver did not come up")
            wait_for(lambda: " ready." in out.read_text(), timeout=60, message="no worker")
            os.killpg(run.pid, signal.SIGINT)
            code = run.wait(timeout=60)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
    assert code == 0
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line on stdout is JSON
    messages = [record["message"] for record in records]
    assert sum("warm shutdown" in message for message in messages) == 1, messages
    assert sum(message == "Shutting down" for message in messages) == 1, messages
    assert not any("Ctrl+C again" in message for message in messages)
    assert not any("color_message" in record for record in records)
    assert err.read_text().count("crm-run: stopping receiver and worker") == 1
