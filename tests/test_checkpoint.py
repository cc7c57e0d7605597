"""Checkpoints and the run lock: torn lines, foreign checkpoints, a second process, stale locks."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tl_truth.checkpoint import LOCK_FILE, JsonlCheckpoint, RunLock, RunLockedError


def test_checkpoint_round_trip_and_torn_last_line(tmp_path):
    path = tmp_path / "x.ckpt.jsonl"
    ck = JsonlCheckpoint(path, key="k")
    ck.append(0, [1, 2])
    ck.append(1, [3])
    with path.open("a") as f:  # a writer killed mid-line
        f.write('{"batch": 2, "items": [4')
    again = JsonlCheckpoint(path, key="k")
    assert again.done() == {0: [1, 2], 1: [3]}
    again.append(2, [4])  # the torn line was dropped, so the file stays parseable
    assert JsonlCheckpoint(path, key="k").done() == {0: [1, 2], 1: [3], 2: [4]}


def test_checkpoint_of_other_inputs_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / "x.ckpt.jsonl"
    JsonlCheckpoint(path, key="k").append(0, [1])
    with pytest.raises(ValueError, match=str(path)):
        JsonlCheckpoint(path, key="other")


def test_checkpoint_killed_before_its_header(tmp_path):
    path = tmp_path / "x.ckpt.jsonl"
    path.write_text("")
    ck = JsonlCheckpoint(path, key="k")
    ck.append(0, ["a"])
    assert json.loads(path.read_text().splitlines()[0]) == {"checkpoint": "k"}
    assert JsonlCheckpoint(path, key="k").done() == {0: ["a"]}


def test_disabled_checkpoint_is_a_no_op(tmp_path):
    ck = JsonlCheckpoint(None, key="k")
    ck.append(0, [1])
    assert ck.done() == {0: [1]}
    assert list(tmp_path.iterdir()) == []


def test_lock_is_reentrant_and_released(tmp_path):
    with RunLock(tmp_path):
        with RunLock(tmp_path):
            assert (tmp_path / LOCK_FILE).exists()
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


def test_second_process_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from tl_truth.checkpoint import RunLock
                with RunLock({str(tmp_path)!r}):
                    print("locked", flush=True)
                    sys.stdin.readline()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            with RunLock(tmp_path):
                pass
    finally:
        holder.communicate("\n", timeout=30)
    with RunLock(tmp_path):  # released by the holder
        pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(dead.stdout)
    import socket

    (tmp_path / LOCK_FILE).write_text(
        json.dumps({"pid": pid, "host": socket.gethostname(), "command": "x", "started": "t"})
    )
    assert pid != os.getpid()
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_cli_refuses_an_out_dir_in_use(tmp_path, capsys):
    from tl_truth.cli import main

    (tmp_path / LOCK_FILE).write_text(
        json.dumps(
            {
                "pid": os.getppid(),
                "host": __import__("socket").gethostname(),
                "command": "tl-truth run --out x",
                "started": "t",
            }
        )
    )
    assert main(["select", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "in use by another tl_truth run" in err and f"pid {os.getppid()}" in err
