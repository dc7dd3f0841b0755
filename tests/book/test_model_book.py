"""A whole book for another model (`make book MODEL=... OUT=...`): its own folder, its title and ledger naming the
model, the run options reaching every chapter, the default book untouched."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tappa_utils import book
from tappa_utils import claims as C
from tappa_utils.book.cli import main
from tappa_utils.results import save_checks, save_run_info

ROOT = Path(__file__).resolve().parents[2]
MODEL = "random:tappa-tiny"

# a chapter that records what it was given: its parameters and the device map its kernel sees
RECORDER = ("import json, os, pathlib\nout = pathlib.Path(out_dir); out.mkdir(parents=True, exist_ok=True)\n"
            "(out / 'seen.json').write_text(json.dumps({'model': model, 'device': device, 'dtype': dtype, "
            "'device_map': os.environ.get('TAPPA_DEVICE_MAP')}))")
PARAMS = ('model = "tappa-tiny"  # the model\ndevice = "cpu"  # device\ndtype = "float32"  # dtype\n'
          'out_dir = "_build/results/x"  # results\n')


def _chapter(path: Path, title: str, *code: str) -> Path:
    nb = new_notebook(cells=[new_markdown_cell(f"# {title}\n\nA fixture chapter."),
                             new_code_cell(PARAMS, metadata={"tags": ["parameters"]}),
                             *[new_code_cell(c) for c in code]])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def _repo(tmp_path: Path) -> Path:
    """A copy of the repository's book sources (toc, config, pages, bibliography) with two fixture chapters."""
    root = tmp_path / "repo"
    for name in ("_toc.yml", "_config.yml", "references.bib", "book/intro.md", "book/bibliography.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    _chapter(root / "notebooks" / "03_predictable.ipynb", "Predictable", RECORDER)
    _chapter(root / "notebooks" / "04_sinks.ipynb", "Sinks", RECORDER)
    return root


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for d in ("_build", "book")
            for p in (root / d).rglob("*") if p.is_file()}


def test_run_options_reach_every_chapter_and_results_go_to_out(tmp_path):
    root = _repo(tmp_path)
    out = tmp_path / "books" / "random"
    target = book.Target(root, out, MODEL)
    options = book.RunOptions(MODEL, "cpu", "bfloat16", "auto")
    failures = book.execute_chapters(root, ["03_predictable", "04_sinks"], timeout=120,
                                     extra_parameters=options.parameters(), target=target, env=options.env())
    assert failures == []
    for stem in ("03_predictable", "04_sinks"):
        seen = json.loads((out / "results" / stem / "seen.json").read_text())
        assert seen == {"model": MODEL, "device": "cpu", "dtype": "bfloat16", "device_map": "auto"}
        assert (out / "book" / "executed" / f"{stem}.ipynb").is_file()
    assert not (root / "_build").exists() and not (root / "book" / "executed").exists()
    assert "TAPPA_DEVICE_MAP" not in os.environ  # restored after the run


def test_model_book_renders_in_its_own_folder(tmp_path):
    """--skip-execute on fixture executed chapters and results: the title, the ledger, the default book."""
    root = _repo(tmp_path)
    (root / "_build" / "html").mkdir(parents=True)
    (root / "_build" / "html" / "index.html").write_text("the default book")
    before = _snapshot(root)
    out = tmp_path / "books" / "random"
    book.render.prepare_out(book.Target(root, out, MODEL))  # what a first `build --model --out` did
    for stem, title in (("03_predictable", "Predictable"), ("04_sinks", "Sinks")):
        _chapter(out / "book" / "executed" / f"{stem}.ipynb", title)
    (out / "results" / "03_predictable").mkdir(parents=True)
    save_checks(out / "results" / "03_predictable",
                [C.claim("predictable.trained_beats_null", -0.2, ci=(-0.3, -0.1), p_value=0.9)])
    save_run_info(out / "results" / "03_predictable", {"model": MODEL})

    index = book.build(root, skip_execute=True, out=out, options=book.RunOptions(MODEL))
    assert index == out.resolve() / "_build" / "html" / "index.html"
    assert _snapshot(root) == before, "the default book was touched"
    assert yaml.safe_load((out / "_config.yml").read_text())["title"] == f"TAPPA Book: {MODEL}"
    intro = (index.parent / "book" / "intro.html").read_text()
    assert f"<title>TAPPA Book: {MODEL}" in intro or f"TAPPA Book: {MODEL}</title>" in intro
    ledger = (out / "_build" / "html" / "book" / "generated" / "ledger.html").read_text()
    assert f"Ledger: the paper’s claims on {MODEL}" in ledger or f"Ledger: the paper's claims on {MODEL}" in ledger
    assert "03_predictable.html" in ledger  # the chapter row links to the page
    assert (out / "_build" / "html" / "book" / "executed" / "04_sinks.html").is_file()
    record = book.read_build_record(out)
    assert record["model"] == MODEL and record["chapters"] == ["03_predictable", "04_sinks"]

    # a second build into the same folder is allowed; a folder holding someone else's files is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("mine")
    assert main(["build", "--skip-execute", "--model", MODEL, "--out", str(tmp_path / "other")]) == 2
    assert (tmp_path / "other" / "thesis.tex").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    (["build", "--out", "somewhere"], "--out (make book OUT=...) needs --model"),
    (["build", "--model", MODEL], "needs --out DIR"),
    (["build", "--model", MODEL, "--out", "x", "--device", "gpu7"], "is not a device"),
    (["build", "--model", MODEL, "--out", "x", "--dtype", "int3"], "is not supported"),
    (["build", "--model", MODEL, "--out", "x", "--device-map", "auto"], "needs --device cuda"),
    (["build", "--model", "random:nope", "--out", "x"], "--model (MODEL) random:nope"),
])
def test_bad_options_fail_in_one_line_before_running(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_out_may_not_be_the_default_book(tmp_path):
    root = _repo(tmp_path)
    for out in (root, root / "_build" / "x", root / "book" / "executed"):
        with pytest.raises(book.BookError, match="would overwrite the default book"):
            book.build(root, skip_execute=True, out=out, options=book.RunOptions(MODEL))


def test_load_model_takes_the_device_map_from_the_environment(monkeypatch):
    """`make book DEVICE_MAP=auto` reaches load_model in every chapter through TAPPA_DEVICE_MAP."""
    import transformers

    from tappa_utils import models

    seen = {}

    def fake(path, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setenv("TAPPA_DEVICE_MAP", "auto")
    with pytest.raises(RuntimeError, match="stop"):
        models.load_model("tappa-tiny")
    assert seen["device_map"] == "auto"
    monkeypatch.delenv("TAPPA_DEVICE_MAP")
    seen.clear()
    with pytest.raises(RuntimeError, match="stop"):
        models.load_model("tappa-tiny")
    assert "dtype" in seen and "device_map" not in seen


def test_chapters_run_two_at_a_time(tmp_path):
    """jobs=2: each chapter in its own process with half the cores' threads; a failure still names its cell, and
    failures come back in book order."""
    root = _repo(tmp_path)
    threads = "import json, os, pathlib\npathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)\n" \
              "(pathlib.Path(out_dir) / 'threads').write_text(os.environ.get('OMP_NUM_THREADS', 'unset'))"
    _chapter(root / "notebooks" / "03_predictable.ipynb", "Predictable", threads)
    _chapter(root / "notebooks" / "04_sinks.ipynb", "Sinks", "raise ValueError('sinks fail')")
    _chapter(root / "notebooks" / "05_diagonal.ipynb", "Diagonal", threads)
    failures = book.execute_chapters(root, ["03_predictable", "04_sinks", "05_diagonal"], timeout=120, jobs=2)
    assert [f.notebook.endswith("04_sinks.ipynb") for f in failures] == [True]
    assert "sinks fail" in failures[0].error and failures[0].cell_index == 2
    expected = str(max(1, (os.cpu_count() or 1) // 2))
    for stem in ("03_predictable", "05_diagonal"):
        assert (root / "_build" / "results" / stem / "threads").read_text() == expected
        assert (root / "book" / "executed" / f"{stem}.ipynb").is_file()
    assert not (root / "book" / "executed" / "04_sinks.ipynb").exists()


def test_smoke_book_uses_each_chapters_small_parameters(tmp_path, monkeypatch):
    """--smoke: each chapter's `tappa.smoke` parameters, under the run options (MODEL, DEVICE, DTYPE win)."""
    root = _repo(tmp_path)
    for stem in ("03_predictable", "04_sinks"):
        path = root / "notebooks" / f"{stem}.ipynb"
        nb = nbformat.read(str(path), as_version=4)
        nb.metadata["tappa"] = {"smoke": {"dtype": "float16", "device": "meta"}}
        nbformat.write(nb, str(path))
    rendered = []
    monkeypatch.setattr(book.render, "render_html",
                        lambda root, toc, source=None: rendered.append(source) or source / "index.html")
    out = tmp_path / "smoke"
    book.build(root, out=out, options=book.RunOptions(MODEL, device="cpu"), smoke=True, check=False, jobs=1)
    for stem in ("03_predictable", "04_sinks"):
        seen = json.loads((out / "results" / stem / "seen.json").read_text())
        assert seen == {"model": MODEL, "device": "cpu", "dtype": "float16", "device_map": None}
    assert rendered == [out.resolve()] and book.read_build_record(out)["smoke"] is True
    with pytest.raises(book.BookError, match="own folder"):
        book.build(root, options=book.RunOptions(MODEL), smoke=True)


def test_make_book_passes_the_variables():
    """`make book MODEL=... OUT=... DEVICE=... DTYPE=... DEVICE_MAP=... JOBS=... SMOKE=1` (dry run: nothing runs)."""
    import os
    import subprocess

    # Under `make test` the parent make exports MAKELEVEL/MAKEFLAGS, and the child prints "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}

    def dry_run(*args: str) -> str:
        proc = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
        return proc.stdout.strip().splitlines()[-1]

    cmd = ["book", f"MODEL={MODEL}", "OUT=books/r", "DEVICE=cuda", "DTYPE=bfloat16",
           "DEVICE_MAP=auto", "JOBS=1", "SMOKE=1"]
    line = dry_run(*cmd)
    assert line.split() == ['".venv/bin/python"', "-m", "tappa_utils.book", "build", "--model", f'"{MODEL}"',
                            "--out", '"books/r"', "--device", '"cuda"', "--dtype", '"bfloat16"', "--device-map",
                            '"auto"', "--jobs", '"1"', "--smoke"]
    assert dry_run("book").split() == ['".venv/bin/python"', "-m", "tappa_utils.book", "build"]
