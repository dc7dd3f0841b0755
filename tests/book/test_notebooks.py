"""Papermill conventions of every notebook in notebooks/, the README parameter table, and a smoke run of each."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from tappa_utils import book

ROOT = Path(__file__).resolve().parents[2]
STEMS = book.chapter_stems(ROOT)  # _toc.yml: the one list of chapters
NOTEBOOKS = [book.notebook_path(s, ROOT) for s in STEMS]


def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


def test_notebooks_exist_and_are_all_in_the_toc():
    assert "00_reading" in STEMS, "_toc.yml does not list 00_reading"
    missing = [p.name for p in NOTEBOOKS if not p.is_file()]
    assert not missing, f"_toc.yml lists chapters without a notebook: {missing}"
    found = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert not found - set(STEMS), f"notebooks not listed in _toc.yml: {sorted(found - set(STEMS))}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_stored_without_outputs_and_with_python3_kernel(path):
    nb = _read(path)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec name must be python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {i} has stored outputs (clear them)"
            assert cell.execution_count is None, f"{path.name}: cell {i} has an execution count (clear it)"
        assert "injected-parameters" not in cell.metadata.get("tags", []), f"{path.name}: papermill leftovers"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_parameters_cell(path):
    nb = _read(path)
    index, cell = book.parameters_cell(nb)  # exactly one, or BookError
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert index == first_code, f"{path.name}: the parameters cell must be the first code cell"
    params = {p.name: p for p in book.parse_parameters(cell.source)}  # one `name = value  # description` a line
    missing = [n for n in book.REQUIRED_PARAMETERS if n not in params]
    assert not missing, f"{path.name}: missing parameters {missing}"
    assert params["model"].default == '"smollm2-135m"'  # the book's model (smoke runs: tappa-tiny)
    assert params["device"].default == '"cpu"'
    assert params["dtype"].default == '"float32"'
    assert params["out_dir"].default == f'"_build/results/{path.stem}"'


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_smoke_metadata(path):
    nb = _read(path)
    smoke = nb.metadata.get("tappa", {}).get("smoke")
    assert isinstance(smoke, dict), f"{path.name}: metadata tappa.smoke (a dict of small parameters) is missing"
    names = {p.name for p in book.notebook_parameters(path)}
    unknown = sorted(set(smoke) - names)
    assert not unknown, f"{path.name}: tappa.smoke sets unknown parameters {unknown}"
    assert "out_dir" not in smoke, f"{path.name}: the smoke run chooses out_dir itself"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_bench_metadata(path):
    """`tappa.bench`: the chapter's one-window sizes for benchmarks/bench_chapters.py, known parameters only."""
    bench = book.bench_parameters(path.parents[1], path.stem, 256)  # BookError when missing
    names = {p.name for p in book.notebook_parameters(path)}
    unknown = sorted(set(bench) - names)
    assert not unknown, f"{path.name}: tappa.bench sets unknown parameters {unknown}"
    assert not {"model", "dtype", "seq_len", "out_dir"} & set(bench), f"{path.name}: the benchmark sets these itself"
    for key in ("num_windows", "samples"):
        if key in bench:
            assert bench[key] <= 2, f"{path.name}: tappa.bench {key}={bench[key]} is not one window"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_parameters_documented_in_readme(path):
    table = book.readme_params_table((ROOT / "README.md").read_text())
    for p in book.notebook_parameters(path):
        assert f"| {path.stem} | `{p.name}` |" in table, (
            f"README's parameter table lacks {path.stem}.{p.name}; run `make params-table`")


def test_readme_table_matches_generator():
    readme = book.readme_params_table((ROOT / "README.md").read_text())
    assert readme == book.params_table(ROOT), "README's parameter table is stale; run `make params-table`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_smoke_run(path, tmp_path):
    """Execute the notebook with its `tappa.smoke` parameters; it must write run_info.json with them."""
    smoke = dict(_read(path).metadata["tappa"]["smoke"])
    out_dir = tmp_path / "out"
    failure = book.execute_notebook(path, tmp_path / f"{path.stem}.ipynb", {**smoke, "out_dir": str(out_dir)},
                                    cwd=ROOT, timeout=600)
    assert failure is None, failure.describe()
    info = json.loads((out_dir / "run_info.json").read_text())
    for key, value in smoke.items():
        if key in info.get("params", {}):
            assert info["params"][key] == value, f"run_info.json records {key}={info['params'][key]!r}, not {value!r}"
    assert "versions" in info


@pytest.mark.parametrize("stem", ["02_time_series", "05_diagonal"])
def test_smoke_run_in_bfloat16(stem, tmp_path):
    """Chapters that plot captured queries and keys run on a bfloat16 model (captures keep the model's dtype; numpy
    has none: a bfloat16 PCA once failed at real shapes)."""
    path = ROOT / "notebooks" / f"{stem}.ipynb"
    smoke = dict(_read(path).metadata["tappa"]["smoke"])
    out_dir = tmp_path / "out"
    failure = book.execute_notebook(path, tmp_path / f"{stem}.ipynb",
                                    {**smoke, "dtype": "bfloat16", "out_dir": str(out_dir)}, cwd=ROOT, timeout=600)
    assert failure is None, failure.describe()
    assert json.loads((out_dir / "run_info.json").read_text())["params"]["dtype"] == "bfloat16"
