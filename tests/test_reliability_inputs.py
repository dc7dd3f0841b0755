"""Reliability (issue 29): inputs that used to end in a traceback each give one line and exit status 2.

A safetensors header that is not a JSON object, a tensor of the wrong shape, pickled weights (never unpickled),
`--out` a symbolic link loop, a random shape beyond the available memory, a corrupt `_toc.yml` and `check-html` on
a missing folder; every case also checks that nothing was written.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_llama
from safetensors.torch import load_file, save_file

from tappa_utils import analysis
from tappa_utils import models as M
from tappa_utils import preflight as pf

REPO = Path(__file__).resolve().parents[1]


def _analyze(capsys, *args: str) -> tuple[int, list[str]]:
    rc = analysis.main(["--seq-len", "64", "--num-windows", "1", *args])
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A good tiny Llama folder and variants: list header, one re-shaped tensor, pickled weights only."""
    root = tmp_path_factory.mktemp("inputs")
    good = save_tiny_llama(root / "good")
    d = {"good": good}
    d["list_header"] = shutil.copytree(good, root / "list_header")
    body = b"[1, 2, 3]"
    (d["list_header"] / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body)
    d["shape"] = shutil.copytree(good, root / "shape")
    sd = load_file(d["shape"] / "model.safetensors")
    sd["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(8, 64)
    save_file(sd, d["shape"] / "model.safetensors", metadata={"format": "pt"})
    d["pickle"] = shutil.copytree(good, root / "pickle")
    (d["pickle"] / "model.safetensors").unlink()
    torch.save(load_file(good / "model.safetensors"), d["pickle"] / "pytorch_model.bin")
    return d


@pytest.mark.parametrize("case, fragment", [
    ("list_header", "model.safetensors has a corrupt header (a JSON list, not an object)"),
    ("shape", "model.layers.1.self_attn.k_proj.weight has shape [8, 64] in the weights but"),
    ("pickle", "its weights are pickled (pytorch_model.bin), which tappa never loads"),
])
def test_bad_weights_give_one_line(case, fragment, folders, tmp_path, capsys):
    before = sorted(p.name for p in folders[case].iterdir())
    rc, err = _analyze(capsys, "--model", str(folders[case]), "--out", str(tmp_path / "out"))
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("analyze: error: ") and fragment in err[0], err[0]
    assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in folders[case].iterdir()) == before


def test_pickled_weights_are_refused_by_name_with_the_fix(folders):
    with pytest.raises(pf.UsageError, match="convert them to model.safetensors"):
        pf.check_model(str(folders["pickle"]))
    assert pf.pickle_weights_only(folders["pickle"]) and not pf.pickle_weights_only(folders["good"])


def test_the_library_never_unpickles_weights(folders, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(OSError, match="safetensors"):
        M.load_model(str(folders["pickle"]))


def test_out_a_symlink_loop_gives_one_line(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    rc, err = _analyze(capsys, "--model", "random:qwen2.5-0.5b", "--out", str(loop))
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("analyze: error: --out ") and "symbolic link loop" in err[0]
    assert os.listdir(tmp_path) == ["loop"] and loop.is_symlink()


def test_a_shape_beyond_the_available_memory_is_refused_before_building(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(M, "available_memory", lambda device="cpu": 2**30)  # 1 GiB free
    monkeypatch.setattr(torch.nn.Module, "to_empty", lambda *a, **k: pytest.fail("the weights were allocated"))
    rc, err = _analyze(capsys, "--model", "random:qwen2.5-0.5b", "--out", str(tmp_path / "out"))
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("analyze: error: qwen2.5-0.5b: its weights need ")
    assert "GiB but cpu has 1.0 GiB available" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_available_memory_reads_meminfo():
    free = M.available_memory("cpu")
    if not Path("/proc/meminfo").is_file():
        assert free is None
        return
    kib = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
               if ln.startswith("MemAvailable:"))
    assert abs(free - kib * 1024) < 2**30  # read moments apart


# ------------------------------------------------------------------------------------------------ the book tool


def _book(args: list[str], cwd: Path) -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "tappa_utils.book", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, [ln for ln in proc.stderr.splitlines() if ln.strip()]


@pytest.mark.parametrize("toc, fragment", [("root: intro\nchapters: [\n  - file: x\n", "is not valid YAML at line 3"),
                                           ("- intro\n- x\n", "holds a YAML list, not a mapping")])
def test_a_corrupt_toc_gives_one_book_error_line(toc, fragment, tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "_toc.yml").write_text(toc)
    rc, err = _book(["ledger", "--output", str(tmp_path / "ledger.md")], tmp_path)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("book: error: ") and "_toc.yml" in err[0] and fragment in err[0], err[0]
    assert sorted(os.listdir(tmp_path)) == ["_toc.yml", "notebooks"]


def test_check_html_on_a_missing_folder_gives_one_book_error_line(tmp_path):
    rc, err = _book(["check-html", str(tmp_path / "nope")], tmp_path)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("book: error: no built book at ") and "run `make book` first" in err[0]
    assert os.listdir(tmp_path) == []


def test_json_list_header_in_a_shard_index_folder(folders, tmp_path):
    folder = shutil.copytree(folders["list_header"], tmp_path / "sharded")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00001.safetensors"}}))
    assert pf.weights_problem(folder) == ("model-00001-of-00001.safetensors has a corrupt header "
                                          "(a JSON list, not an object)")
