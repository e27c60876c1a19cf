"""Real processes: killed workers, two processes on one file, Ctrl-C, interpreter exit."""

import os
import signal
import sqlite3
import time

from conftest import script, spawn, wait_for

from simplepyq import SimplePyQ

# A worker process: runs the tasks of channel "c" until none is left, writing each task's
# number to its log, one line per run (appends of one short line are atomic), then pausing
# (the optional fifth argument, in seconds).
WORKER = """
import os, sys, time
from simplepyq import SimplePyQ

db, log, workers, lease = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

def handler(args):
    os.write(fd, f"{args['n']}\\n".encode())
    if args.get("hang"):
        time.sleep(3600)
    time.sleep(pause)

q = SimplePyQ(db, lease=lease)
q.add_channel("c", handler, max_workers=workers)
q.run_until_complete()
print("complete", flush=True)
"""


def runs(*logs):
    """The task numbers run, per log line, across logs."""
    numbers = []
    for log in logs:
        if os.path.exists(log):
            with open(log) as f:
                numbers += [int(line) for line in f.read().split()]
    return numbers


def test_a_killed_workers_task_runs_again_and_nothing_is_lost(tmp_path, db):
    q = SimplePyQ(db)
    q.enqueue("c", {"n": 0, "hang": True})  # retries=0: the default
    q.enqueue_many("c", [{"n": n} for n in range(1, 50)])
    worker = script(tmp_path, "worker.py", WORKER)
    log_a, log_b = str(tmp_path / "a.log"), str(tmp_path / "b.log")
    a = spawn(worker, db, log_a, "1", "1")
    wait_for(lambda: 0 in runs(log_a), what="the first worker to start task 0")
    a.send_signal(signal.SIGKILL)
    a.wait()
    assert q.counts("c")["running"] == 1  # left behind by the killed process
    # A second worker recovers the task once its lease (1 s) expired: it runs again.
    b = spawn(worker, db, log_b, "2", "1")
    wait_for(lambda: 0 in runs(log_b), what="task 0 to run again in the second worker")
    wait_for(lambda: q.counts("c")["done"] == 49, what="the other tasks to be done")
    b.send_signal(signal.SIGKILL)
    b.wait()
    # A third worker, whose handler does not hang, recovers task 0 again and finishes it.
    third = []
    c = SimplePyQ(db, lease=1)
    c.add_channel("c", lambda args: third.append(args["n"]), max_workers=2)
    c.run_until_complete()
    assert c.counts("c") == {"pending": 0, "running": 0, "delayed": 0, "done": 50, "failed": 0, "waiting": 0}
    assert third == [0]
    assert runs(log_a) == [0]
    # Every other task ran exactly once; none was lost.
    assert sorted(runs(log_b)) == list(range(50))


def test_two_processes_on_one_file_run_each_task_once(tmp_path, db):
    q = SimplePyQ(db)
    n = 2000
    q.enqueue_many("c", [{"n": i} for i in range(n)])
    worker = script(tmp_path, "worker.py", WORKER)
    logs = [str(tmp_path / f"{i}.log") for i in range(2)]
    # 2 ms a task: a process cannot drain the file before the other one starts.
    procs = [spawn(worker, db, log, "2", "30", "0.002") for log in logs]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "complete" in out
    done = runs(*logs)
    assert sorted(done) == list(range(n)), "each task ran exactly once"
    per_process = [len(runs(log)) for log in logs]
    assert all(k > 0 for k in per_process), per_process  # both processes took work
    assert q.counts() == {"pending": 0, "running": 0, "delayed": 0, "done": n, "failed": 0, "waiting": 0}


def test_ctrl_c_stops_cleanly_and_raises_keyboard_interrupt(tmp_path, db):
    main = script(
        tmp_path,
        "main.py",
        """
        import sys, time
        from simplepyq import SimplePyQ
        q = SimplePyQ(sys.argv[1])
        def slow(args):
            print("started", args, flush=True)
            time.sleep(0.5)
        q.add_channel("c", slow)
        q.enqueue_many("c", range(20))
        q.run_until_complete()
        """,
    )
    p = spawn(main, db)
    assert p.stdout.readline().startswith("started")
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert time.monotonic() - t < 5
    # Python exits from an uncaught KeyboardInterrupt by the signal itself.
    assert p.returncode == -signal.SIGINT
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    counts = SimplePyQ(db).counts()
    # The running handler finished; the others were not started, and none failed.
    assert counts["running"] == 0 and counts["failed"] == 0
    assert counts["done"] >= 1 and counts["done"] + counts["pending"] == 20


def test_exiting_with_a_running_queue_neither_hangs_nor_fails_tasks(tmp_path, db):
    main = script(
        tmp_path,
        "main.py",
        """
        import sys, threading, time
        from simplepyq import SimplePyQ
        q = SimplePyQ(sys.argv[1])
        started = threading.Event()
        def slow(args):
            print("started", flush=True)
            started.set()
            time.sleep(0.3)
        q.add_channel("c", slow, max_workers=2)
        q.enqueue_many("c", range(20))
        q.start()
        started.wait(10)
        # The script ends here, with handlers running and tasks queued.
        """,
    )
    p = spawn(main, db)
    assert p.stdout.readline().startswith("started")
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert err == ""
    counts = SimplePyQ(db).counts()
    assert counts["running"] == 0 and counts["failed"] == 0
    assert counts["done"] >= 1 and counts["done"] + counts["pending"] == 20


def test_the_file_stays_a_plain_sqlite_file(db):
    q = SimplePyQ(db)
    q.enqueue("c", {"n": 1})
    with sqlite3.connect(db) as conn:
        [(status,)] = conn.execute("SELECT status FROM simplepyq_tasks").fetchall()
    assert status == "pending"


def test_a_started_queue_no_longer_referenced_finishes_its_handlers_before_exit(tmp_path, db):
    # The queue is collected while its handler runs: it must not run on into the
    # interpreter's finalization (a thread that takes the GIL then is ended by force,
    # through the engine's frames), nor fail or lose the task.
    main = script(
        tmp_path,
        "main.py",
        """
        import gc, sys, threading, time
        from simplepyq import SimplePyQ
        started = threading.Event()
        def slow(args):
            print("started", flush=True)
            started.set()
            time.sleep(0.5)
            print("finished", flush=True)
        def run():
            q = SimplePyQ(sys.argv[1])
            q.add_channel("c", slow)
            q.enqueue("c", 1)
            q.start()
            started.wait(10)
        run()
        gc.collect()
        # The script ends here: the queue is garbage, its handler still sleeping.
        """,
    )
    p = spawn(main, db)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert out.split() == ["started", "finished"], (out, err)
    counts = SimplePyQ(db).counts()
    assert counts["done"] == 1 and counts["running"] == 0, counts


def test_ctrl_c_ends_a_stop_that_waits_for_a_hung_handler(tmp_path, db):
    main = script(
        tmp_path,
        "main.py",
        """
        import sys, threading, time
        from simplepyq import SimplePyQ
        q = SimplePyQ(sys.argv[1])
        started = threading.Event()
        def hung(args):
            started.set()
            time.sleep(3600)
        q.add_channel("c", hung)
        q.enqueue("c", 1)
        q.start()
        started.wait(10)
        print("stopping", flush=True)
        q.stop()
        """,
    )
    p = spawn(main, db)
    assert p.stdout.readline().strip() == "stopping"
    time.sleep(0.3)
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert time.monotonic() - t < 5
    assert "KeyboardInterrupt" in err, err
