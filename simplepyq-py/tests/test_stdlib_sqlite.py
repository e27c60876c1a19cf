"""The queue file opened by Python's own `sqlite3` module in the same process, as the
original's users do (to look at their tasks, or to keep their own tables in that file).

Two copies of SQLite in one process break each other's file locks: POSIX locks belong to
the process, and closing any descriptor of the file drops them all, whichever copy held
them. The package therefore uses the interpreter's SQLite library, the one its `sqlite3`
module loaded."""

import sqlite3
import threading

from simplepyq import SimplePyQ


def test_the_sqlite3_module_reading_the_file_first_breaks_nothing(db):
    # A benchmark written for the original looks at the file before it enqueues.
    q = SimplePyQ(db)
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode").fetchone()
    con.close()
    done = []
    q.add_channel("c", done.append, max_workers=2)
    for i in range(5000):
        q.enqueue("c", i)
    q.run_until_complete()
    assert sorted(done) == list(range(5000))


def test_the_sqlite3_module_using_the_file_while_the_queue_runs_breaks_nothing(db):
    q = SimplePyQ(db)
    done = []
    q.add_channel("c", done.append, max_workers=2)
    for i in range(3000):
        q.enqueue("c", i)
    stop = threading.Event()
    errors = []
    rounds = []

    def user():
        # Open, read the queue's table, write a table of its own, close: again and again.
        try:
            while not stop.is_set():
                con = sqlite3.connect(db, timeout=30)
                con.execute("SELECT count(*) FROM simplepyq_tasks").fetchone()
                con.execute("CREATE TABLE IF NOT EXISTS app (n INTEGER)")
                con.execute("INSERT INTO app VALUES (?)", (len(rounds),))
                con.commit()
                con.close()
                rounds.append(1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=user)
    t.start()
    try:
        q.run_until_complete()
        for i in range(3000, 4000):
            q.enqueue("c", i)
        q.run_until_complete()
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert len(rounds) > 0
    assert sorted(done) == list(range(4000))
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("SELECT count(*) FROM app").fetchone() == (len(rounds),)
    assert q.counts()["done"] == 4000
    con.close()
