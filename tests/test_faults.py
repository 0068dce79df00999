"""Faults while a stage runs: killed with SIGKILL, or the disk full while writing. Nothing half-written is left where
DVC looks, the error is one line, and the next run completes (cleaning what the killed run left beside the output)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from test_stage_errors import teacher, workspace

from conftest import ROOT
from stages.core.artifacts import atomic_dir


def test_sigkill_inside_atomic_dir_keeps_the_old_output_and_the_next_write_cleans_up(tmp_path):
    out = tmp_path / "artifact"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("complete v1")
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from stages.core.artifacts import atomic_dir
        with atomic_dir({str(out)!r}) as tmp:
            (tmp / "a.txt").write_text("half of v2")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert (out / "a.txt").read_text() == "complete v1"  # the killed writer never touched the output itself
    assert len(list(tmp_path.glob(".artifact.tmp-*"))) == 1  # its temp folder is what it left
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("complete v2")
    assert (out / "a.txt").read_text() == "complete v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_sigkilled_stage_under_dvc_leaves_nothing_dvc_accepts_and_the_rerun_completes(tmp_path):
    """`dvc repro prune` started, the stage process group killed with SIGKILL while it runs; `dvc status` then
    still reports the stage as not up to date (no dvc.lock entry, no output) and `dvc repro` completes it."""
    ws = workspace(tmp_path)
    teacher(ws)
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    # a dvc.yaml of one stage whose command holds still long enough to be killed mid-run, then runs prune
    (ws / "dvc.yaml").write_text(
        "stages:\n  prune:\n    cmd: python -c \"import time; open('started', 'w').close(); time.sleep(60)\" && python -m stages.prune\n"
        "    deps: [models/teacher, stages/prune.py]\n    params: [prune]\n    outs: [models/pruned]\n"
    )
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q", "--no-scm"]):
        subprocess.run(cmd, cwd=ws, check=True, capture_output=True)
    p = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "prune"],
        cwd=ws,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 120
    while not (ws / "started").exists() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert not (ws / "models" / "pruned").exists()
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "prune", "--json"], cwd=ws, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and "prune" in json.loads(status.stdout), status.stdout + status.stderr
    (ws / "dvc.yaml").write_text(
        "stages:\n  prune:\n    cmd: python -m stages.prune\n    deps: [models/teacher, stages/prune.py]\n    params: [prune]\n"
        "    outs: [models/pruned]\n"
    )
    r = subprocess.run([sys.executable, "-m", "dvc", "repro", "prune"], cwd=ws, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (ws / "models" / "pruned" / "card.json").is_file()
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "prune", "--json"], cwd=ws, env=env, capture_output=True, text=True)
    assert json.loads(status.stdout) == {}


def test_full_disk_while_writing_gives_one_line_and_no_half_written_artifact(tmp_path):
    """The weights writer fails half-way with ENOSPC (as a full disk does): exit 2, one line naming the cause, and no
    models/pruned nor any temp folder beside it."""
    ws = workspace(tmp_path)
    teacher(ws)
    script = textwrap.dedent(
        """
        import errno, os, runpy
        import safetensors.torch as st
        from stages.core import artifacts

        def full_disk(tensors, filename, metadata=None):
            with open(filename, "wb") as f:
                f.write(b"\\0" * 1000)  # the bytes that fitted
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

        st.save_file = artifacts.save_file = full_disk
        runpy.run_module("stages.prune", run_name="__main__")
        """
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=ws, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and lines[0].startswith("error: "), r.stderr
    assert sorted(p.name for p in (ws / "models").iterdir()) == ["teacher"]
    assert not (ws / "reports").exists()
