"""ARCHITECTURE.md's new-chapter recipe, followed on a scratch chapter in a copy of the book's chapter list and
notebooks: with only the notebook and its `_toc.yml` entry, every reader of the chapter list sees it (the toc, the
parameter table, the smoke-run parameters, the benchmark's sizes) and the notebook passes the notebook conventions
and its smoke run."""
from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tappa_utils import book

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_chapters  # noqa: E402
import test_notebooks as conventions  # noqa: E402  (pytest puts tests/book on sys.path)

PARAMETERS = """model = "smollm2-135m"  # the model
device = "cpu"  # the device
dtype = "float32"  # the dtype
seed = 0  # random seed
num_windows = 4  # text windows measured
seq_len = 256  # tokens a window
out_dir = "_build/results/{stem}"  # where results go
"""
SETUP = """from tappa_utils.chapter import chapter_params
from tappa_utils.results import save_run_info

params = chapter_params(globals())
save_run_info(out_dir, params)
"""


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _add_scratch_chapter(root: Path) -> str:
    """The recipe: notebooks/NN_scratch.ipynb (parameters cell, chapter_params, tappa.smoke and tappa.bench) and its
    `_toc.yml` entry at the end of the last numbered part. Returns the stem."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    numbered = [p for p in toc["parts"] if p.get("numbered")]
    number = sum(len(p["chapters"]) for p in numbered) + 1
    stem = f"{number:02d}_scratch"
    nb = new_notebook(cells=[new_markdown_cell("# Scratch"),
                             new_code_cell(PARAMETERS.format(stem=stem), metadata={"tags": ["parameters"]}),
                             new_code_cell(SETUP)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["tappa"] = {"smoke": {"model": "tappa-tiny", "num_windows": 1, "seq_len": 64},
                            "bench": {"num_windows": 1}}
    nbformat.write(nb, str(book.notebook_path(stem, root)))
    numbered[-1]["chapters"].append({"file": f"{book.EXECUTED_DIR}/{stem}"})
    (root / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    return stem


@pytest.fixture
def scratch(tmp_path):
    """A copy of `_toc.yml` and notebooks/, before and after the recipe: (root, stem, changed files)."""
    root = tmp_path / "book"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "_toc.yml", root / "_toc.yml")
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(path, root / "notebooks" / path.name)
    before = _files(root)
    stem = _add_scratch_chapter(root)
    after = _files(root)
    changed = sorted(f for f in set(before) | set(after) if before.get(f) != after.get(f))
    return root, stem, changed


def test_the_recipe_touches_two_files(scratch):
    root, stem, changed = scratch
    assert changed == ["_toc.yml", f"notebooks/{stem}.ipynb"]


def test_every_reader_of_the_chapter_list_sees_the_new_chapter(scratch):
    root, stem, _ = scratch
    old = book.chapter_stems(ROOT)
    assert book.chapter_stems(root) == [*old, stem]
    assert book.existing_chapters(root, warn=False)[-1] == stem
    rows = [line for line in book.params_table(root).splitlines() if line.startswith(f"| {stem} |")]
    assert [r.split(" | ")[1] for r in rows] == ["`model`", "`device`", "`dtype`", "`seed`", "`num_windows`",
                                                 "`seq_len`", "`out_dir`"]
    assert book.smoke_parameters(root, stem) == {"model": "tappa-tiny", "num_windows": 1, "seq_len": 64}
    assert bench_chapters.chapter_parameters(stem, "qwen2.5-0.5b", "float32", 128, root=root) == {
        "model": "random:qwen2.5-0.5b", "dtype": "float32", "seq_len": 128, "num_windows": 1}
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    numbered = [Path(c["file"]).name for p in toc["parts"] if p.get("numbered") for c in p["chapters"]]
    assert numbered.index(stem) + 1 == int(stem[:2]), "the new chapter is not chapter NN in the sidebar"


def test_the_new_chapter_follows_the_notebook_conventions(scratch, tmp_path):
    root, stem, _ = scratch
    path = book.notebook_path(stem, root)
    conventions.test_stored_without_outputs_and_with_python3_kernel(path)
    conventions.test_parameters_cell(path)
    conventions.test_smoke_metadata(path)
    conventions.test_bench_metadata(path)
    (tmp_path / "run").mkdir()
    conventions.test_smoke_run(path, tmp_path / "run")  # papermill: writes run_info.json with the smoke values
