"""The build log stays readable: no per-kernel warning about unencrypted TCP (kernels use IPC), no kernel log
noise, no IPC socket files left in the working directory."""
from __future__ import annotations

import json

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from tappa_utils import book


def test_kernel_runs_over_ipc_quietly(tmp_path, capfd):
    nb = new_notebook(cells=[new_code_cell("x = 1  # x", metadata={"tags": ["parameters"]}),
                             new_code_cell("import json, sys\nf = sys.argv[sys.argv.index('-f') + 1]\n"
                                           "print(json.dumps([sys.argv, json.load(open(f))['transport']]))")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "t.ipynb"))
    assert book.execute_notebook(tmp_path / "t.ipynb", tmp_path / "out.ipynb", {"x": 2}, cwd=tmp_path,
                                 timeout=120) is None
    err = capfd.readouterr().err
    assert "without encryption" not in err and "IPKernelApp" not in err
    argv, transport = json.loads(nbformat.read(str(tmp_path / "out.ipynb"), as_version=4).cells[-1].outputs[0]["text"])
    assert "--IPKernelApp.log_level=CRITICAL" in argv and transport == "ipc"
    assert not [p.name for p in tmp_path.iterdir() if "ipc" in p.name], "IPC sockets left in the working folder"
