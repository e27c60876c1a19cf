"""The package's type stubs and annotations: mypy --strict accepts the package and a
program using it, and rejects a wrong call."""

import os
import subprocess
import sys

import simplepyq

USE = """
from simplepyq import DelayException, SimplePyQ, Task

def handler(args: dict[str, int]) -> None:
    raise DelayException(5)

q = SimplePyQ("tasks.db", lease=10)
q.add_channel("c", handler, 2, backoff=(1, 60))
tid: int = q.enqueue("c", {"a": 1}, retries=1, delay=2.0, priority=3, unique="k")
ids: list[int] = q.enqueue_many("c", [1, 2])
page: list[Task] = q.tasks("c", status="failed", limit=10)
attempts: int = page[0].attempts
counts: dict[str, int] = q.counts()
"""


def mypy(*args):
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *args],
        capture_output=True,
        text=True,
    )


def test_mypy_strict_accepts_the_package_and_a_program(tmp_path):
    program = tmp_path / "use.py"
    program.write_text(USE)
    package = os.path.dirname(simplepyq.__file__)
    out = mypy(str(program), package)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_rejects_a_wrong_call(tmp_path):
    program = tmp_path / "wrong.py"
    program.write_text("from simplepyq import SimplePyQ\nSimplePyQ().enqueue('c', {}, retries='3')\n")
    out = mypy(str(program))
    assert out.returncode == 1 and "retries" in out.stdout, out.stdout
