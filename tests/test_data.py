"""Built-in texts: the English held-out / calibration split and which text a model gets by default."""
from __future__ import annotations

import pytest

from tappa_utils import data


def test_english_splits_are_disjoint_and_cover_every_topic():
    from pydoc_data.topics import topics

    held, cal = data.english_topics("heldout"), data.english_topics("calibration")
    assert not set(held) & set(cal) and set(held) | set(cal) == set(topics)
    assert 0.2 < len(cal) / len(topics) < 0.3
    held_text, cal_text = data.english_text("heldout"), data.english_text("calibration")
    assert len(held_text) > 200_000
    # no paragraph of one split appears in the other (the documentation repeats some under several topics)
    cal_paragraphs = {p for p in cal_text.split("\n\n") if len(p) > 80}
    held_paragraphs = set(held_text.split("\n\n"))
    assert len(cal_paragraphs) > 300 and not cal_paragraphs & held_paragraphs
    with pytest.raises(ValueError, match="split must be one of"):
        data.english_text("train")


def test_default_text_follows_the_model():
    assert data.default_text_kind("tappa-tiny") == data.default_text_kind("random:tappa-tiny") == "code"
    assert data.default_text_kind(str(data.ASSETS / "tappa-tiny") + "/") == "code"
    assert data.default_text_kind(None) == "code"  # library calls that name no model keep the old default
    assert data.default_text_kind("smollm2-135m") == data.default_text_kind("Qwen/Qwen2.5-0.5B") == "english"
    assert data.load_text(model="smollm2-135m") == data.english_text("heldout")
    assert data.load_text(model="tappa-tiny") == data.HELDOUT_SAMPLE.read_text(encoding="utf-8")
    assert data.load_text("given", model="smollm2-135m") == "given"  # a reader's text always wins


def test_real_models_calibrate_on_english_never_on_held_out_text():
    from tappa_utils.prune.scores import calibration_text

    cal = calibration_text(model="smollm2-135m")
    assert cal == data.english_text("calibration")
    held = set(data.english_text("heldout").split("\n\n"))
    assert not {p for p in cal.split("\n\n") if len(p) > 80} & held
    tiny = calibration_text(n_bytes=5000, model="tappa-tiny")
    assert len(tiny) <= 5000 and tiny not in data.HELDOUT_SAMPLE.read_text(encoding="utf-8")


def test_default_prompts_follow_the_models_text():
    """tappa-tiny (trained on code) continues code; a real English model continues English."""
    from tappa_utils.data import default_prompts

    assert any("def " in p for p in default_prompts("tappa-tiny"))
    assert default_prompts("random:tappa-tiny") == default_prompts("tappa-tiny")
    english = default_prompts("smollm2-135m")
    assert english != default_prompts("tappa-tiny") and all(p[0].isupper() for p in english)
