"""The book's own CI for forks: GitHub workflows checked by actionlint, the commands they run, and the random-weight
model of another family that the papermill matrix uses."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
BROKEN = Path(__file__).resolve().parent / "fixtures" / "workflows" / "broken.yml"


def actionlint() -> str:
    """The actionlint binary: $ACTIONLINT, the environment's bin/ (requirements.txt installs it), or PATH."""
    candidates = [os.environ.get("ACTIONLINT"), str(Path(sys.executable).parent / "actionlint"),
                  shutil.which("actionlint")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("actionlint not found: `make test` installs it (requirements.txt); or set ACTIONLINT=/path/to/it")


def run_actionlint(*paths: Path) -> subprocess.CompletedProcess:
    # shellcheck/pyflakes integrations off: the result must not depend on what else is installed on the machine
    cmd = [actionlint(), "-oneline", "-shellcheck=", "-pyflakes=", *map(str, paths)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


def _workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def test_workflows_pass_actionlint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert [f.name for f in files] == ["book.yml", "chapters.yml", "ci.yml"]
    proc = run_actionlint(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_rejects_a_broken_workflow():
    proc = run_actionlint(BROKEN)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert 'needs job "missing-job" which does not exist' in out
    assert 'input "fetch-dept" is not defined' in out
    assert 'property "nope" is not defined' in out
    assert len(out.strip().splitlines()) == 3, out


def _runs(job: dict) -> list[str]:
    return [step.get("run", "") for step in job["steps"]]


def test_workflows_run_the_projects_commands():
    ci = _workflow("ci.yml")
    assert any(r.startswith("make test") for r in _runs(ci["jobs"]["test"]))

    book = _workflow("book.yml")
    steps = book["jobs"]["build"]["steps"]
    assert "make book" in _runs(book["jobs"]["build"])
    uploads = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert any(s["with"]["path"] == "_build/html" and s.get("if") == "always()" for s in uploads)
    pages = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-pages-artifact")]
    assert pages and pages[0]["with"]["path"] == "_build/html" and "refs/heads/main" in pages[0]["if"]
    deploy = book["jobs"]["deploy"]
    assert deploy["needs"] == "build" and "refs/heads/main" in deploy["if"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}


def test_chapter_matrix_covers_existing_chapters_on_two_families():
    job = _workflow("chapters.yml")["jobs"]["chapter"]
    matrix = job["strategy"]["matrix"]
    assert len(matrix["chapter"]) >= 3
    for stem in matrix["chapter"]:
        assert (ROOT / "notebooks" / f"{stem}.ipynb").is_file(), stem
    assert matrix["model"] == ["tappa-tiny", "random-qwen2"]
    script = "\n".join(_runs(job))
    assert ".ci/random_model.py runs/models/random-qwen2" in script and (ROOT / ".ci" / "random_model.py").is_file()
    assert "-p model" in script and "-p out_dir" in script
    upload = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert upload and upload[0]["if"] == "always()"


def test_random_model_script_writes_a_loadable_qwen2(tmp_path):
    from tappa_utils.models import check_supported, load_model

    out = tmp_path / "random-qwen2"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / ".ci" / "random_model.py"), str(out), "--seed", "3"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    model, tok = load_model(str(out))
    tiny, tiny_tok = load_model("tappa-tiny")
    check_supported(model)
    assert model.config.model_type == "qwen2" and tiny.config.model_type == "llama"  # another family
    assert model.config.vocab_size == tiny.config.vocab_size
    text = "def f(x):\n    return x"
    assert tok(text)["input_ids"] == tiny_tok(text)["input_ids"]  # the same byte-level tokenizer
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], tiny.config.vocab_size) and torch.isfinite(logits).all()
    biases = model.model.layers[0].self_attn.q_proj.bias
    assert biases.abs().sum() > 0  # the family's q bias is random, not the zero of a fresh init
