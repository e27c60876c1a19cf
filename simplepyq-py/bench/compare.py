"""The original simplepyq 0.1.3 and this package side by side, in one run on one machine:
N tasks with a trivial handler, 4 workers; enqueue and drain rates, and tasks lost or run
twice. Each engine runs in a process of its own, on a new file.

    python bench/compare.py --original DIR [--n 20000] [--workers 4]

DIR holds the original, installed apart: `pip install --target DIR simplepyq==0.1.3`
(simplepyq-py/test.sh installs it in target/python-venv/original-0.1.3). Ours is the
package this interpreter imports: build it in release mode (`pip install ./simplepyq-py`,
or `SIMPLEPYQ_PY_RELEASE=1 bash simplepyq-py/test.sh` for its virtualenv).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ONE_RUN = r"""
import json, sys, time
import simplepyq
from simplepyq import SimplePyQ

path, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ran = []

def handler(args):
    ran.append(args["n"])

q = SimplePyQ(path)
q.add_channel("bench", handler, max_workers=workers)
t = time.perf_counter()
for i in range(n):
    q.enqueue("bench", {"n": i})
enqueue_s = time.perf_counter() - t
t = time.perf_counter()
q.run_until_complete()
drain_s = time.perf_counter() - t
unique = len(set(ran))
print(json.dumps({
    "engine": "ours" if hasattr(simplepyq, "QueueError") else "original 0.1.3",
    "n": n, "workers": workers,
    "enqueue_per_s": n / enqueue_s, "drain_per_s": n / drain_s,
    "lost": n - unique, "ran_twice": len(ran) - unique,
}))
"""


def run(engine_path, n, workers):
    env = dict(os.environ)
    if engine_path is not None:
        env["PYTHONPATH"] = engine_path
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", ONE_RUN, os.path.join(tmp, "tasks.db"), str(n), str(workers)],
            env=env, check=True, capture_output=True, text=True,
        )
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", required=True, help="folder with the original installed")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    original = run(args.original, args.n, args.workers)
    ours = run(None, args.n, args.workers)
    for r in (original, ours):
        print(json.dumps(r))
    print(
        f"\n{'':16}{'enqueue/s':>12}{'drain/s':>12}{'lost':>8}{'ran twice':>11}\n"
        + "\n".join(
            f"{r['engine']:16}{r['enqueue_per_s']:12,.0f}{r['drain_per_s']:12,.0f}{r['lost']:8}{r['ran_twice']:11}"
            for r in (original, ours)
        )
        + f"\n{'ours / original':16}{ours['enqueue_per_s'] / original['enqueue_per_s']:11.1f}x"
        + f"{ours['drain_per_s'] / original['drain_per_s']:11.1f}x"
    )


if __name__ == "__main__":
    main()
