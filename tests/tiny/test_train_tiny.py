"""The training script: LR schedule, data mixtures, and that a resumed run equals an uninterrupted one."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tappa_utils.tiny.corpus import BOS_ID, MIXTURES, copy_test_batch, induction_window, sample_batch
from tappa_utils.tiny.train import _main, lr_at, main


def test_lr_schedule_warmup_cosine_floor():
    peak = 1e-3
    assert lr_at(0, peak, 10, 100) == pytest.approx(peak / 10)
    assert lr_at(9, peak, 10, 100) == pytest.approx(peak)
    assert lr_at(55, peak, 10, 100) == pytest.approx(peak * (0.1 + 0.9 * 0.5))
    assert lr_at(100, peak, 10, 100) == pytest.approx(0.1 * peak)
    assert lr_at(500, peak, 10, 100) == pytest.approx(0.1 * peak)


@pytest.mark.parametrize("mixture", sorted(MIXTURES))
def test_batches_start_with_bos_and_hold_bytes(mixture):
    data = np.frombuffer(b"def f(x):\n    return x + 1\n" * 400, dtype=np.uint8).astype(np.int64)
    b = sample_batch(np.random.default_rng(0), data, 8, 128, MIXTURES[mixture])
    assert b.shape == (8, 128) and (b[:, 0] == BOS_ID).all() and (b[:, 1:] < 256).all()


def test_induction_window_repeats_a_random_segment():
    data = np.zeros(5000, dtype=np.int64)  # all-zero text: any non-zero byte comes from a planted segment
    x = induction_window(np.random.default_rng(1), data, 511)
    planted = x[x != 0]
    assert len(planted) >= 2 * 8  # at least one segment of >= 8 bytes occurring at least twice


def test_copy_test_batch_second_occurrence_equals_first():
    data = np.arange(3000, dtype=np.int64) % 256
    x, first, second = copy_test_batch(np.random.default_rng(0), data, 4, seq_len=200, seg_len=32)
    assert (x[:, first] == x[:, second]).all() and (x[:, 0] == BOS_ID).all()


def test_resumed_training_equals_uninterrupted(tmp_path):
    args = ["--steps", "4", "--batch", "2", "--seq-len", "64", "--warmup", "2", "--threads", "1",
            "--eval-every", "1000"]
    main(["--out", str(tmp_path / "a"), *args])
    main(["--out", str(tmp_path / "b"), *args, "--until", "2"])
    main(["--out", str(tmp_path / "b"), *args, "--mixture", "base"])
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    log = [json.loads(line) for line in (tmp_path / "b" / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    phases = json.loads((tmp_path / "b" / "train_args.json").read_text())["phases"]
    assert [p["start_step"] for p in phases] == [0, 2]


def test_export_loads_through_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    main(["--out", str(tmp_path / "run"), "--steps", "1", "--batch", "1", "--seq-len", "32", "--threads", "1"])
    main(["--out", str(tmp_path / "run"), "--export", str(tmp_path / "hf")])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)
    torch.testing.assert_close(model.state_dict()["model.embed_tokens.weight"],
                               ck["model"]["model.embed_tokens.weight"])
    assert tok("hé").input_ids == [BOS_ID, *"hé".encode()]


def test_retrieval_window_repeats_its_segment_at_least_a_quarter_later():
    from tappa_utils.tiny.corpus import retrieval_window

    rng = np.random.default_rng(0)
    data = np.full(10_000, ord("a"))  # text without any printable-random byte: the planted segment stands out
    for n in (64, 511, 1023):
        x = retrieval_window(rng, data, n)
        planted = np.flatnonzero(x != ord("a"))
        first = planted.min()
        seg_len = (len(planted)) // 2  # two copies (a random byte may equal 'a': at most a few missing)
        assert len(x) == n and abs(len(planted) - 2 * seg_len) <= 1
        second = planted[len(planted) // 2]
        assert second - first >= n // 4
        np.testing.assert_array_equal(x[first:first + 8], x[second:second + 8])


def test_noise_window_plants_random_stretches_in_text():
    from tappa_utils.tiny.corpus import noise_window

    rng = np.random.default_rng(0)
    data = np.full(10_000, ord("a"))
    for n in (96, 511, 1023):
        x = noise_window(rng, data, n)
        noisy = np.flatnonzero(x != ord("a"))
        assert len(x) == n and x.min() >= 33 and x.max() < 127
        assert 0.5 * min(64, n // 3) <= len(noisy) <= 3 * min(256, n // 3)  # 1-3 stretches, each <= a third
        assert len(np.unique(x[noisy])) > 20  # random printable bytes, not a repeated pattern


def test_init_from_an_export_starts_from_its_weights_and_steps(tmp_path):
    main(["--out", str(tmp_path / "run"), "--steps", "2", "--batch", "1", "--seq-len", "32", "--threads", "1"])
    main(["--out", str(tmp_path / "run"), "--export", str(tmp_path / "hf")])
    args = ["--steps", "3", "--schedule-from", "2", "--batch", "1", "--seq-len", "64", "--threads", "1",
            "--warmup", "1", "--lr", "1e-9", "--eval-every", "1", "--long-eval", "64", "--mixture", "long"]
    main(["--out", str(tmp_path / "phase2"), "--init-from", str(tmp_path / "hf"), *args])
    a = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "phase2" / "ckpt.pt", weights_only=True)
    assert b["step"] == 3  # continues the exported run's step count
    w = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(a["model"][w], b["model"][w], rtol=0, atol=1e-6)  # lr 1e-9: still the export's weights
    log = [json.loads(line) for line in (tmp_path / "phase2" / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and {"retrieval_acc", "loss_second_half"} <= set(log[-1])


def test_init_from_a_folder_without_weights_is_refused(tmp_path, capsys):
    rc = main(["--out", str(tmp_path / "run"), "--init-from", str(tmp_path), "--steps", "2"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init-from" in err[0] and "model.safetensors" in err[0]
    assert not (tmp_path / "run").exists()


def test_tokens_until_counts_each_phase_with_its_own_shape():
    from tappa_utils.tiny.train import tokens_until

    phases = [{"start_step": 0, "batch": "16", "seq_len": "512"},
              {"start_step": 500, "batch": "16", "seq_len": "512"},
              {"start_step": 500, "batch": "16", "seq_len": "512"},
              {"start_step": 3000, "batch": "8", "seq_len": "1024"},
              {"start_step": 3100, "batch": "8", "seq_len": "1024"}]
    assert tokens_until(phases, 3000) == 3000 * 16 * 512
    assert tokens_until(phases, 3800) == 3000 * 16 * 512 + 800 * 8 * 1024  # the 3000-3100 stretch counts once
    assert tokens_until(phases, 250) == 250 * 16 * 512


def test_weight_decay_spares_norms_and_the_embedding_and_old_checkpoints_keep_one_group():
    from transformers import LlamaForCausalLM

    from tappa_utils.tiny.train import make_config, param_groups

    model = LlamaForCausalLM(make_config(num_hidden_layers=1))
    decay, keep = param_groups(model, 0.5, all_params=False)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.5 and keep["weight_decay"] == 0.0
    assert {names[id(p)] for p in keep["params"]} == {"model.embed_tokens.weight", "model.norm.weight",
                                                      "model.layers.0.input_layernorm.weight",
                                                      "model.layers.0.post_attention_layernorm.weight"}
    assert all(p.dim() == 2 for p in decay["params"]) and len(decay["params"]) == 7  # q k v o gate up down
    (only,) = param_groups(model, 0.1)  # the default: how the shipped model was trained
    assert only["weight_decay"] == 0.1 and len(only["params"]) == len(names)


def test_sink_heads_counts_heads_beyond_layer_0_whose_mass_sits_on_the_first_token(monkeypatch):
    import pandas as pd
    from transformers import LlamaForCausalLM

    from tappa_utils import metrics
    from tappa_utils.tiny.train import make_config, sink_heads

    torch.manual_seed(0)
    model = LlamaForCausalLM(make_config(num_hidden_layers=2)).eval()
    ids = torch.randint(0, 256, (1, 64))
    ids[:, 0] = BOS_ID
    real = sink_heads(model, ids)  # random weights: attention spread out, no sink
    assert real["sinks_beyond_l0"] == 0 and 0 < real["max_sink_beyond_l0"] < 0.3
    table = pd.DataFrame({"layer": [0, 1, 1, 2], "head": [0, 0, 1, 3], "sink_mass": [0.9, 0.3, 0.29, 0.5]})
    monkeypatch.setattr(metrics, "analyze_heads", lambda *a, **k: table)
    out = sink_heads(model, ids)  # layer 0 does not count; 0.3 does, 0.29 does not
    assert out == {"sinks_beyond_l0": 2.0, "max_sink_beyond_l0": 0.5, "top_sinks": "L2H3:0.500 L1H0:0.300 L1H1:0.290"}


def test_heads_makes_a_wider_run_that_keeps_its_architecture(tmp_path):
    from transformers import AutoConfig

    from tappa_utils.preflight import UsageError

    run = tmp_path / "wide"
    main(["--out", str(run), "--steps", "1", "--batch", "1", "--seq-len", "32", "--threads", "1", "--heads", "8"])
    assert json.loads((run / "train_args.json").read_text())["arch"]["num_attention_heads"] == 8
    main(["--out", str(run), "--steps", "2", "--batch", "1", "--seq-len", "32", "--threads", "1"])  # resumes as 8
    main(["--out", str(run), "--export", str(tmp_path / "hf")])
    cfg = AutoConfig.from_pretrained(tmp_path / "hf")
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (8, 2, 32)
    assert torch.load(run / "ckpt.pt", weights_only=True)["step"] == 2
    with pytest.raises(UsageError, match="keeps its architecture"):
        _main(["--out", str(run), "--steps", "3", "--heads", "4", "--threads", "1"])
    with pytest.raises(UsageError, match="multiple of the 2 KV heads"):
        _main(["--out", str(tmp_path / "odd"), "--heads", "3"])
    # an exported 4-head folder whose record claims 8 heads: the weights do not fit, one clear error
    main(["--out", str(tmp_path / "four"), "--steps", "1", "--batch", "1", "--seq-len", "32", "--threads", "1"])
    main(["--out", str(tmp_path / "four"), "--export", str(tmp_path / "hf4")])
    record = json.loads((tmp_path / "hf4" / "train_args.json").read_text())
    record["arch"]["num_attention_heads"] = 8
    (tmp_path / "hf4" / "train_args.json").write_text(json.dumps(record))
    with pytest.raises(UsageError, match="do not fit this architecture"):
        _main(["--out", str(tmp_path / "mix"), "--init-from", str(tmp_path / "hf4"), "--steps", "3", "--threads", "1",
               "--batch", "1", "--seq-len", "32"])


def test_widen_heads_keeps_every_logit_and_lets_the_copies_differ():
    from transformers import LlamaForCausalLM

    from tappa_utils.tiny.train import make_config
    from tappa_utils.tiny.widen import widen_heads

    torch.manual_seed(0)
    small = LlamaForCausalLM(make_config(num_hidden_layers=2)).eval()
    state = small.state_dict()
    wide = LlamaForCausalLM(make_config(num_hidden_layers=2, num_attention_heads=8)).eval()
    wide.load_state_dict(widen_heads(state, 4, 8, 32))
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(wide(ids).logits, small(ids).logits, atol=1e-5, rtol=1e-4)
    q4 = state["model.layers.0.self_attn.q_proj.weight"].reshape(4, 32, -1)
    q8 = wide.state_dict()["model.layers.0.self_attn.q_proj.weight"].reshape(8, 32, -1)
    for h in range(4):  # head h's copies are heads 2h and 2h+1, both over h's KV head (h // 2 -> (2h) // 4)
        assert torch.equal(q8[2 * h], q4[h]) and torch.equal(q8[2 * h + 1], q4[h])
    o8 = wide.state_dict()["model.layers.0.self_attn.o_proj.weight"].reshape(-1, 8, 32)
    assert not torch.allclose(o8[:, 0], o8[:, 1])  # perturbed: the copies get different gradients
    with pytest.raises(ValueError, match="multiple of old_heads"):
        widen_heads(state, 4, 6, 32)


def test_init_from_with_more_heads_widens_the_model(tmp_path):
    from transformers import AutoConfig

    from tappa_utils.preflight import UsageError

    small = ["--steps", "1", "--batch", "1", "--seq-len", "32", "--threads", "1"]
    main(["--out", str(tmp_path / "four"), *small])
    main(["--out", str(tmp_path / "four"), "--export", str(tmp_path / "hf4")])
    with pytest.raises(UsageError, match="give a multiple of 4"):
        _main(["--out", str(tmp_path / "six"), "--init-from", str(tmp_path / "hf4"), "--heads", "6", *small])
    assert not (tmp_path / "six").exists()
    main(["--out", str(tmp_path / "eight"), "--init-from", str(tmp_path / "hf4"), "--heads", "8",
          "--steps", "2", "--batch", "1", "--seq-len", "32", "--threads", "1"])
    assert json.loads((tmp_path / "eight" / "train_args.json").read_text())["arch"]["num_attention_heads"] == 8
    main(["--out", str(tmp_path / "eight"), "--export", str(tmp_path / "hf8")])
    assert AutoConfig.from_pretrained(tmp_path / "hf8").num_attention_heads == 8
