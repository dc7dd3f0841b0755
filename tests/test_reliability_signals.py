"""Reliability (issue 29): a signal at any moment of a command gives one line and the right exit status.

From the first instruction (during the imports, before the command's own handling) Ctrl-C exits 130 and SIGTERM
143, with one line `<prog>: interrupted; ...`; the line says whether the new result had already been swapped in.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_reliability import previous_result, snapshot, staging_leftovers

from tappa_utils import interrupts
from tappa_utils import io as tio
from tappa_utils import preflight as pf

REPO = Path(__file__).resolve().parents[1]


def _signal_early(args: list[str], sig: int, cwd: Path, delay: float = 0.3) -> tuple[int, list[str]]:
    """Start `python <args>` and send `sig` after `delay` s (during its imports); its status and stderr lines."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, [ln for ln in err.splitlines() if ln.strip()]


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated")])
def test_signal_during_the_imports_gives_one_line(sig, status, word, tmp_path):
    out = tmp_path / "res"
    before = previous_result(out, "analyze", {"summary.csv": "complete"})
    rc, err = _signal_early(["-m", "tappa_utils", "analyze", "--out", str(out)], sig, tmp_path)
    assert rc == status
    assert err == [f"analyze: {word}; earlier results are unchanged"]
    assert snapshot(out) == before and staging_leftovers(tmp_path) == []


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_the_book_tool_imports_gives_one_line(sig, status, tmp_path):
    rc, err = _signal_early(["-m", "tappa_utils.book", "check-html", str(tmp_path / "site")], sig, tmp_path)
    assert rc == status
    assert len(err) == 1 and err[0].startswith("book: ") and "earlier results are unchanged" in err[0], err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, prog", [
    (["python", "-m", "tappa_utils", "analyze", "--out", "x"], "analyze"),
    (["python", "-u", "-X", "dev", "-m", "tappa_utils", "kv-eval"], "kv-eval"),
    (["python", "-m", "tappa_utils"], "tappa"),
    (["python", "-m", "tappa_utils.book", "build"], "book"),
    (["python", "/venv/bin/tappa", "prune-eval"], "prune-eval"),
    (["python", "-m", "pytest", "tests"], None),
    (["python", "-c", "import tappa_utils"], None),
    (["python", "-m", "ipykernel_launcher", "-f", "k.json"], None),
])
def test_early_handlers_only_for_a_command_line(argv, prog):
    assert interrupts.cli_prog(argv) == prog


def test_early_handlers_are_not_installed_in_a_library_use():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert interrupts.early_handlers(["python", "-m", "pytest"]) is False
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# ------------------------------------------------------------------------------------------------ the message


@pytest.mark.parametrize("exc, status, word", [(KeyboardInterrupt, 130, "interrupted"),
                                               (pf.Terminated, 143, "terminated")])
def test_signal_after_the_swap_says_the_new_result_is_in_place(exc, status, word, tmp_path, capsys):
    out = tmp_path / "res"
    previous_result(out, "demo", {"summary.csv": "old"})
    capsys.readouterr()

    def body():
        rd = tio.ResultDir(out, "demo")
        (rd / "summary.csv").write_text("new")
        rd.commit()
        assert rd.committed
        raise exc()

    assert pf.run_cli("demo", body) == status
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [f"demo: {word}; the new result is in place"]
    assert (out / "summary.csv").read_text() == "new" and staging_leftovers(tmp_path) == []


def test_signal_before_the_swap_says_earlier_results_are_unchanged(tmp_path, capsys):
    out = tmp_path / "res"
    before = previous_result(out, "demo", {"summary.csv": "old"})
    capsys.readouterr()

    def body():
        with tio.ResultDir(out, "demo") as tmp:
            (tmp / "summary.csv").write_text("half")
            raise KeyboardInterrupt()

    assert pf.run_cli("demo", body) == 130
    assert capsys.readouterr().err.splitlines() == ["demo: interrupted; earlier results are unchanged"]
    assert snapshot(out) == before and staging_leftovers(tmp_path) == []
