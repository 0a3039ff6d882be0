from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from sqlalchemy import select, text

from inference_service.models.repository import ModelRecords
from inference_service.operations.repository import Operations
from inference_service.storage import Database
from inference_service.storage.tables import OperationRow
from tests.conftest import REPO_ROOT
from tests.unit.storage.crash_writer import DATA


def test_kill_9_loses_no_commit_and_no_half_transaction(database: Database) -> None:
    min_commits = random.randint(20, 80)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.unit.storage.crash_writer",
            database.url.render_as_string(False),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    reported = 0
    try:
        deadline = time.monotonic() + 20
        while reported < min_commits:
            line = writer.stdout.readline()
            assert line, f"writer exited early: {writer.stderr.read() if writer.stderr else ''}"
            reported = int(line)
            assert time.monotonic() < deadline
        time.sleep(random.uniform(0, 0.05))  # land the kill anywhere in a transaction
        os.kill(writer.pid, signal.SIGKILL)
        # Lines already in the pipe were reported before the kill.
        for line in writer.stdout:
            reported = int(line)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    database.close()
    survivor = Database(database.url.render_as_string(False))
    if survivor.dialect == "sqlite":
        with survivor.engine.connect() as connection:
            assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    with survivor.session() as session:
        record = ModelRecords(session, DATA).get("crash@main")
        count = Operations(session).count()
    with survivor.session() as session:
        ids = list(session.scalars(select(OperationRow.id).order_by(OperationRow.id)))
    survivor.close()
    assert record is not None
    assert count >= reported, "a reported commit was lost"
    assert record.size_bytes == count, "half a transaction survived"
    assert ids == [f"op-{i:08d}" for i in range(1, count + 1)]
