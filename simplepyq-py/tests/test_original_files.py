"""Files written by the real original simplepyq 0.1.3 (installed apart, see conftest) open
here: after a backup copy, their tasks move into this engine's schema, none lost."""

import os
import signal
import sqlite3

from conftest import original_path, script, spawn, wait_for

from simplepyq import SimplePyQ

# Run by the original package: a done task, a failed one, a delayed one, one left running
# by a crash (the process is killed in its handler), and pending ones never started.
ORIGINAL = """
import sys, time
import simplepyq
from simplepyq import SimplePyQ, DelayException
assert not hasattr(simplepyq, "QueueError"), "this must be the original package"

def handler(args):
    n = args["n"]
    if n == 1:
        raise Exception("failed in the original")
    if n == 2:
        raise DelayException(3600)
    if n == 3:
        time.sleep(3600)  # killed here: the original leaves the task 'running'

q = SimplePyQ(sys.argv[1])
q.add_channel("work", handler)
for n in range(4):
    q.enqueue("work", {"n": n, "name": f"task {n}", "blob": b"\\x00\\x01", "list": [n, None]})
q.start()
while True:
    time.sleep(0.05)
"""


def statuses(db):
    try:
        with sqlite3.connect(db) as conn:
            return dict(conn.execute("SELECT id, status FROM tasks").fetchall())
    except sqlite3.OperationalError:
        return {}  # the original has not created its table yet (the file exists first)


def test_a_file_of_the_original_is_imported_with_every_task(tmp_path, db):
    original = spawn(script(tmp_path, "original.py", ORIGINAL), db, pythonpath=original_path())
    try:
        wait_for(lambda: os.path.exists(db) and statuses(db).get(4) == "running", what="the original to run task 4")
        # Pending tasks the original's stuck worker never takes, enqueued by the original too.
        original_enqueue = script(
            tmp_path,
            "enqueue.py",
            """
            import sys
            from simplepyq import SimplePyQ
            q = SimplePyQ(sys.argv[1])
            q.add_channel("work", print)
            for n in range(4, 10):
                q.enqueue("work", {"n": n, "name": f"task {n}", "blob": b"\\x00\\x01", "list": [n, None]})
            """,
        )
        p = spawn(original_enqueue, db, pythonpath=original_path())
        assert p.wait(timeout=30) == 0, p.stderr.read()
    finally:
        original.send_signal(signal.SIGKILL)
        original.wait()
    before = statuses(db)
    assert before == {1: "done", 2: "failed", 3: "delayed", 4: "running", **{i: "pending" for i in range(5, 11)}}

    q = SimplePyQ(db)
    backup = db + ".simplepyq-0.1.3.bak"
    assert os.path.exists(backup)
    with sqlite3.connect(backup) as conn:
        assert dict(conn.execute("SELECT id, status FROM tasks").fetchall()) == before
    assert q.counts() == {"pending": 7, "running": 0, "delayed": 1, "done": 1, "failed": 1, "waiting": 0}
    delayed = q.task(3)
    assert delayed.status == "delayed" and delayed.run_at > delayed.created_at + 3500
    got = []
    q.add_channel("work", got.append)
    q.start()
    wait_for(lambda: q.counts()["done"] == 8, what="the imported pending tasks to run")
    q.stop()
    assert sorted(a["n"] for a in got) == [3] + list(range(4, 10))
    assert got[0] == {"n": 3, "name": "task 3", "blob": b"\x00\x01", "list": [3, None]}
    # New ids go on after the original's.
    assert q.enqueue("work", {}) == 11
    # Opening again imports nothing more.
    assert SimplePyQ(db).counts()["done"] == 8
    assert not os.path.exists(backup + ".1")
