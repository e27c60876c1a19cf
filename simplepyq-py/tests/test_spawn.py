"""Processes started by multiprocessing's "spawn" and "forkserver" start methods (the
default on macOS and Windows, and from Python 3.14 on Linux): a queue given to such a
process is pickled, and opens anew there. Each scenario runs in a script of its own, whose
functions the started processes import."""

import multiprocessing
import pickle

import pytest

from conftest import script, spawn
from simplepyq import SimplePyQ

# The parent adds a channel and enqueues; two processes started by the method given get the
# queue as a Process argument and run the channel to the end; a ProcessPoolExecutor's call
# enqueues with it. Each run is logged with the pid that ran it.
STARTED = """
import multiprocessing, os, sys
from concurrent.futures import ProcessPoolExecutor
from simplepyq import SimplePyQ

def handler(n):
    with open(os.environ["RUNS_LOG"], "a") as f:
        f.write(f"{os.getpid()} {n}\\n")

def work(q):
    q.run_until_complete()

def more(q, n):
    return q.enqueue("work", n)

if __name__ == "__main__":
    method, db = sys.argv[1], sys.argv[2]
    os.environ["RUNS_LOG"] = sys.argv[3]
    ctx = multiprocessing.get_context(method)
    q = SimplePyQ(db, lease=20)
    q.add_channel("work", handler, max_workers=2)
    q.enqueue_many("work", list(range(50)))
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        pool.submit(more, q, 50).result()
    workers = [ctx.Process(target=work, args=(q,)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        print("exit", w.exitcode, flush=True)
    print("done", q.counts("work")["done"], "pids", *[w.pid for w in workers], flush=True)
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_queue_given_to_a_started_process_opens_there_with_its_channels(tmp_path, db, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method on this system")
    log = str(tmp_path / "runs.log")
    p = spawn(script(tmp_path, "started.py", STARTED), method, db, log)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, out + err
    assert out.count("exit 0") == 2, out + err
    assert "done 51" in out, out + err
    pids = out.split("pids ")[1].split()
    with open(log) as f:
        runs = [line.split() for line in f.read().splitlines()]
    assert sorted(int(n) for _, n in runs) == list(range(51)), "a task ran twice or never"
    assert {pid for pid, _ in runs} <= set(pids)


def test_a_queue_in_memory_is_not_pickled():
    with pytest.raises(TypeError, match="queue in memory"):
        pickle.dumps(SimplePyQ(":memory:"))
