"""Shared helpers: a fresh store per test, and Python scripts run as real processes."""

import os
import subprocess
import sys
import textwrap
import time

import pytest


@pytest.fixture
def db(tmp_path):
    """The path of a new SQLite store file."""
    return str(tmp_path / "tasks.db")


def script(tmp_path, name, source):
    """Writes a Python script; returns its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def spawn(path, *args, pythonpath=None, **kwargs):
    """Starts a script in a new Python process (this interpreter, this package)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.Popen(
        [sys.executable, path, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for(predicate, timeout=30.0, what="the condition"):
    """Polls until predicate() is true; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def original_path():
    """The folder where the original simplepyq 0.1.3 (and msgpack) is installed, apart from
    this package: `pip install --target DIR simplepyq==0.1.3`. The test script sets it."""
    path = os.environ.get("SIMPLEPYQ_ORIGINAL")
    if not path:
        pytest.fail(
            "SIMPLEPYQ_ORIGINAL is not set: install the original with "
            "`pip install --target DIR simplepyq==0.1.3` and set it to DIR (test.sh does)"
        )
    return path
