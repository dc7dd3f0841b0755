"""`make lab`: the JupyterLab command line, and a real headless JupyterLab that lists the chapters."""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tappa_utils.book import lab

ROOT = Path(__file__).resolve().parents[2]


def test_lab_command_serves_notebooks_and_opens_a_browser_only_with_a_display(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    cmd = lab.lab_command(ROOT)
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]  # this interpreter: the project's environment
    assert f"--notebook-dir={ROOT / 'notebooks'}" in cmd and "--no-browser" in cmd
    monkeypatch.setenv("DISPLAY", ":0")
    assert "--no-browser" not in lab.lab_command(ROOT)
    assert "--no-browser" in lab.lab_command(ROOT, browser=False)
    with pytest.raises(FileNotFoundError, match="repository root"):
        lab.lab_command(ROOT / "tests")


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_port_outside_1_to_65535_is_refused_before_anything_starts(monkeypatch, capsys, port):
    from tappa_utils.book.__main__ import main

    started = []
    monkeypatch.setattr(lab.os, "execv", lambda *a: started.append(a))
    assert main(["lab", "--port", port]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("book: error: argument --port: must be a port number (1-65535)")
    assert repr(port) in err[0] or port in err[0]
    assert started == []
    from tappa_utils.preflight import UsageError

    with pytest.raises(UsageError, match=r"--port must be a port number \(1-65535\), got 70000"):
        lab.run(ROOT, port=70000)  # called directly: the same check
    assert started == []


def test_make_lab_runs_the_book_lab_command():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lab: venv\n\t(.*)$", makefile, flags=re.M)
    assert recipe and recipe.group(1) == '"$(PY)" -m tappa_utils.book lab $(LAB_ARGS)'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def test_jupyterlab_starts_headless_and_lists_the_chapters(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    cmd = lab.lab_command(ROOT, port=port, token=token, browser=False)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 45
        while True:
            try:
                status, _ = _get(f"{base}/api/status?token={token}", timeout=2)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"JupyterLab did not answer on port {port}:\n" + (tmp_path / "lab.log").read_text()[-3000:])
            time.sleep(0.5)

        status, body = _get(f"{base}/api/contents?token={token}")
        listed = {item["name"] for item in json.loads(body)["content"] if item["type"] == "notebook"}
        assert listed == {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
        assert "00_reading.ipynb" in listed

        _, body = _get(f"{base}/api/kernelspecs?token={token}")
        assert "python3" in json.loads(body)["kernelspecs"]
        status, body = _get(f"{base}/lab?token={token}")
        assert status == 200 and b"JupyterLab" in body

        with pytest.raises(urllib.error.HTTPError) as denied:  # the token is required
            _get(f"{base}/api/contents")
        assert denied.value.code == 403
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and any kernel it started
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    assert proc.returncode is not None
