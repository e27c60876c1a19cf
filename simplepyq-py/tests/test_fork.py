"""Forked children: a queue made before os.fork (multiprocessing's "fork" start method,
gunicorn's --preload, Celery's prefork) in the child. Each scenario runs in a script of its
own, so that the forks leave pytest's process alone."""

import os
import sys

import pytest

from conftest import script, spawn

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this system")

# The parent's queue works all along (its workers drain a channel, a thread enqueues): the
# children fork at random moments of that work. A child enqueues 5 tasks with the queue it
# inherited, then ends with os._exit (as multiprocessing's children do); one that has not
# ended within 20 s is killed and counts as hung.
CHILDREN_ENQUEUE = """
import os, sys, threading, time, warnings
from simplepyq import SimplePyQ

warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
q = SimplePyQ(sys.argv[1])
q.add_channel("work", lambda args: None, max_workers=2)
q.start()
stop = False

def busy():
    n = 0
    while not stop:
        q.enqueue("work", n)
        n += 1

thread = threading.Thread(target=busy)
thread.start()
hung = 0
for child in range(10):
    time.sleep(0.01)
    pid = os.fork()
    if pid == 0:
        try:
            for k in range(5):
                q.enqueue("from_children", [child, k])
        except BaseException as e:
            print("child failed:", e, flush=True)
            os._exit(1)
        os._exit(0)
    deadline = time.time() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if status != 0:
                print("child", child, "ended with", status, flush=True)
            break
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            hung += 1
            break
        time.sleep(0.01)
stop = True
thread.join()
q.stop()
print("hung", hung, "from_children", q.counts("from_children")["pending"], flush=True)
"""


def test_children_forked_while_the_queue_works_enqueue_with_it(tmp_path, db):
    p = spawn(script(tmp_path, "children.py", CHILDREN_ENQUEUE), db)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, out + err
    assert "hung 0 from_children 50" in out, out + err


# A child that exits normally (its atexit handlers run) leaves the parent's running queue
# alone: it stops nothing and gives back none of the parent's tasks, and says nothing on
# stderr. The parent's handler logs each run; every task runs once.
CHILD_EXITS = """
import os, sys, time, warnings
from simplepyq import SimplePyQ

warnings.simplefilter("ignore", DeprecationWarning)
db, log = sys.argv[1], sys.argv[2]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

def handler(n):
    os.write(fd, f"{n}\\n".encode())
    time.sleep(0.02)

q = SimplePyQ(db)
q.add_channel("work", handler, max_workers=2)
q.enqueue_many("work", list(range(40)))
q.start()
time.sleep(0.1)
pid = os.fork()
if pid == 0:
    err = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT)
    os.dup2(err, 2)
    sys.exit(0)
_, status = os.waitpid(pid, 0)
print("child status", status, flush=True)
q.run_until_complete()
print("done", q.counts("work")["done"], flush=True)
"""


def test_a_forked_child_that_exits_leaves_the_parents_queue_alone(tmp_path, db):
    log, child_err = str(tmp_path / "runs.log"), str(tmp_path / "child.err")
    p = spawn(script(tmp_path, "exits.py", CHILD_EXITS), db, log, child_err)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, out + err
    assert "child status 0" in out, out + err
    assert "done 40" in out, out + err
    with open(child_err) as f:
        assert f.read() == ""
    with open(log) as f:
        ran = sorted(int(n) for n in f.read().split())
    assert ran == list(range(40)), "a task ran twice or never"


# Two children forked from a process that added a channel and never started run that
# channel's tasks with the queue they inherited (gunicorn's --preload, Celery's prefork).
CHILDREN_WORK = """
import os, sys, warnings
from simplepyq import SimplePyQ

warnings.simplefilter("ignore", DeprecationWarning)
db, log = sys.argv[1], sys.argv[2]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

def handler(n):
    os.write(fd, f"{os.getpid()} {n}\\n".encode())

q = SimplePyQ(db)
q.add_channel("work", handler, max_workers=2)
q.enqueue_many("work", list(range(60)))
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        q.run_until_complete()
        os._exit(0)
    children.append(pid)
for pid in children:
    _, status = os.waitpid(pid, 0)
    print("child status", status, flush=True)
print("done", q.counts("work")["done"], "children", " ".join(map(str, children)), flush=True)
"""


def test_forked_children_run_the_channels_they_inherited(tmp_path, db):
    log = str(tmp_path / "runs.log")
    p = spawn(script(tmp_path, "work.py", CHILDREN_WORK), db, log)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, out + err
    assert out.count("child status 0") == 2, out + err
    assert "done 60" in out, out + err
    children = out.split("children ")[1].split()
    with open(log) as f:
        runs = [line.split() for line in f.read().splitlines()]
    assert sorted(int(n) for _, n in runs) == list(range(60)), "a task ran twice or never"
    assert {pid for pid, _ in runs} <= set(children)
