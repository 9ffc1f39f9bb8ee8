"""brainmri.jobs.submit.wait shows sweep progress on real submitit local jobs: a live bar on a terminal, one
line per change of the counts otherwise."""

import fcntl
import io
import os
import struct
import termios
import time

import submitit

from brainmri.jobs.submit import wait


def _jobs(folder):
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=2)
    return [executor.submit(time.sleep, 0.1), executor.submit(int, "not a number"),  # finishes; fails
            executor.submit(time.sleep, 3)]


def test_wait_without_terminal_prints_one_line_per_change(tmp_path):
    out = io.StringIO()
    wait(_jobs(tmp_path), poll_s=0.2, stream=out)
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("tasks: 0 pending, 0 running, 2 finished, 1 failed of 3; elapsed ")
    assert len(lines) == len(set(lines)) <= 4  # never the same line twice: no spam while nothing changes
    assert any("ETA" in line for line in lines[:-1]) and "ETA" not in lines[-1]


def test_wait_on_a_terminal_draws_a_live_bar(tmp_path):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    with open(slave, "w") as tty:
        assert tty.isatty()
        wait(_jobs(tmp_path), poll_s=0.2, stream=tty)
    os.set_blocking(master, False)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EAGAIN: nothing more; EIO: the terminal side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert "\r" in text and "3/3" in text and "2 finished, 1 failed" in text
