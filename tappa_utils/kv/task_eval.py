"""KV-cache compression judged by task accuracy: greedy answers after a compressed context (the paper's Section 6).

Each sample is a context and a question (`long_tasks`). The context goes through the model once; every press is
replayed on its own copy of that full cache (`evaluate.compressed_caches`: the same cache `with press(model)` gives,
at the cost of one prefill for all methods); then the question (never compressed, kvpress's context / question
split) is fed after the compressed cache at its original positions and the answer is decoded greedily, stopping at
the end-of-turn token. A sample scores 1 when `tasks.score` accepts the answer.

Accuracy per (task, length, method, keep) comes with a Wilson 95 % interval over samples. TAPPA is compared with
every other method on the same samples by an exact McNemar (sign) test on the discordant pairs, Holm-corrected over
the methods and budgets compared (`paired_comparisons`).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..stats import holm, wilson_interval
from .decoding import cache_lengths, continue_forward


@torch.no_grad()
def answer_after(model, cache, question_ids: torch.Tensor, start: int, stop_ids: Iterable[int],
                 max_new_tokens: int = 16) -> list[int]:
    """Feed the question after a (possibly compressed) cache of original length `start`, then decode greedily.

    Stops at any of `stop_ids` (not included) or after `max_new_tokens`.
    """
    stop = set(int(s) for s in stop_ids)
    logits = continue_forward(model, cache, question_ids, start)[-1]
    pos = start + question_ids.shape[-1]
    out: list[int] = []
    for _ in range(max_new_tokens):
        tok = int(logits.argmax())
        if tok in stop:
            break
        out.append(tok)
        logits = continue_forward(model, cache, torch.tensor([[tok]]), pos)[-1]
        pos += 1
    return out


def stop_token_ids(tokenizer) -> list[int]:
    """The ids that end an answer: EOS and, for chat models, the end-of-turn token."""
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        i = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(i, int) and i != tokenizer.unk_token_id and i >= 0:
            ids.add(i)
    return sorted(i for i in ids if i is not None)


def run_task_eval(model, tokenizer, samples: Sequence, methods: Sequence[str], keeps: Sequence[float],
                  window: int = 32, max_new_tokens: int = 16, progress: bool = False,
                  done: Mapping[int, list[dict]] | None = None,
                  on_sample: Callable[[int, list[dict]], None] | None = None):
    """Per-sample, per-(method, keep) results (pandas DataFrame).

    Columns: task, length, depth, sample, method, keep, correct (0/1), answer, kept_fraction, press_ms, answer_ms,
    context_tokens, layer_lengths (cached tokens per layer, space-separated) and layer_qsim (the window
    q-similarity per layer a TAPPA-family press recorded; empty for the others). The full cache is the method "full"
    (keep 1.0), run once per sample. `done` maps sample indices to rows an earlier run of the same suite made
    (`task_progress`): those samples are not run again; `on_sample(i, rows)` is called after each sample run.
    """
    import pandas as pd

    from ..long_tasks import chat_prompt, score
    from .evaluate import compressed_caches
    from .methods import make_press

    if not samples:
        raise ValueError("no samples: make a suite with tasks.make_suite first")
    stops = stop_token_ids(tokenizer)
    rows = []
    done = done or {}
    for i, sample in enumerate(samples):
        if i in done:
            rows.extend(done[i])
            continue
        first = len(rows)
        ctx_ids, question_ids = chat_prompt(tokenizer, sample)
        ctx, question = torch.tensor([ctx_ids]), torch.tensor([question_ids])
        presses = {("full", 1.0): None}
        for keep in keeps:
            for m in methods:
                if m != "full":
                    presses[(m, float(keep))] = make_press(m, float(keep), window=window)
        timings: dict = {}
        caches, _ = compressed_caches(model, ctx, presses, timings)
        t = ctx.shape[1]
        for (method, keep), cache in caches.items():
            kept = cache_lengths(cache)
            t0 = time.perf_counter()
            ids = answer_after(model, cache, question, t, stops, max_new_tokens)
            answer = tokenizer.decode(ids, skip_special_tokens=True)
            qsim = getattr(presses[(method, keep)], "layer_qsim", None)
            rows.append({"task": sample.task, "length": sample.target_tokens, "depth": sample.depth, "sample": i,
                         "method": method, "keep": keep, "correct": int(score(answer, sample)), "answer": answer,
                         "kept_fraction": sum(kept) / (len(kept) * t), "press_ms": 1000 * timings[(method, keep)],
                         "answer_ms": 1000 * (time.perf_counter() - t0), "context_tokens": t,
                         "layer_lengths": " ".join(str(int(n)) for n in kept),
                         "layer_qsim": " ".join(f"{float(q):.5g}" for q in qsim) if qsim is not None else ""})
        if on_sample is not None:
            on_sample(i, rows[first:])
        if progress:
            print(f"  sample {i + 1}/{len(samples)} ({sample.task}, {t} tokens) done", flush=True)
    return pd.DataFrame(rows)


def accuracy_table(results):
    """Accuracy with its Wilson interval per (task, length, method, keep); the full cache repeated at every keep."""
    import pandas as pd

    rows = []
    keeps = sorted(k for k in results.keep.unique() if k < 1.0) or [1.0]  # only the full cache: at keep 1
    for (task, length, method, keep), g in results.groupby(["task", "length", "method", "keep"]):
        k, n = int(g.correct.sum()), len(g)
        lo, hi = wilson_interval(k, n)
        for kk in (keeps if method == "full" else [keep]):
            rows.append({"task": task, "length": length, "method": method, "keep": kk, "accuracy": k / n,
                         "ci_low": lo, "ci_high": hi, "n": n})
    return pd.DataFrame(rows)


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of paired 0/1 outcomes (a sign test on the discordant pairs).

    >>> round(mcnemar_p(np.array([1] * 10 + [0] * 2), np.array([0] * 10 + [0] * 2)), 4)
    0.002
    """
    a, b = np.asarray(a, int), np.asarray(b, int)
    wins, losses = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparisons(results, reference: str = "tappa"):
    """TAPPA (or `reference`) against every other method at every (task, length, keep), on the same samples.

    Columns: task, length, keep, method, n (the samples both ran: a method run on fewer samples is paired on
    those), reference_accuracy, method_accuracy (on those samples), difference (reference - method), wins, losses,
    p (exact McNemar), p_holm (Holm over every row of the table).
    """
    import pandas as pd

    rows = []
    comp = results[results.method != "full"]
    for (task, length, keep), g in comp.groupby(["task", "length", "keep"]):
        ref = g[g.method == reference].set_index("sample").correct
        if ref.empty:
            continue
        for method, h in g[g.method != reference].groupby("method"):
            other = h.set_index("sample").correct
            both = ref.index.intersection(other.index)
            if both.empty:
                continue
            a, b = ref.loc[both].to_numpy(), other.loc[both].to_numpy()
            rows.append({"task": task, "length": length, "keep": keep, "method": method, "n": len(both),
                         "reference_accuracy": a.mean(), "method_accuracy": b.mean(), "difference": a.mean() - b.mean(),
                         "wins": int(((a == 1) & (b == 0)).sum()), "losses": int(((a == 0) & (b == 1)).sum()),
                         "p": mcnemar_p(a, b)})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(table.p.tolist())
    return table


def ranks(results, keep: float | None = None):
    """Each compressing method's mean accuracy per keep over the (task, length) cells that every method ran at that
    keep (each cell weighs the same, whatever its number of samples), and its rank (1 = best)."""
    comp = results[results.method != "full"]
    if keep is not None:
        comp = comp[comp.keep == keep]
    if comp.empty:  # only the full cache ran (a run that asks what the model can do at all)
        import pandas as pd

        return pd.DataFrame(columns=["keep", "method", "accuracy", "rank"])
    cells = comp.groupby(["keep", "method"]).apply(lambda g: frozenset(zip(g.task, g.length)), include_groups=False)
    common = cells.groupby("keep").agg(lambda sets: frozenset.intersection(*sets))
    comp = comp[np.array([(t, n) in common[k] for k, t, n in zip(comp.keep, comp.task, comp.length)], dtype=bool)]
    per_cell = comp.groupby(["keep", "method", "task", "length"]).correct.mean()
    table = per_cell.groupby(["keep", "method"]).mean().rename("accuracy").reset_index()
    table["rank"] = table.groupby("keep").accuracy.rank(ascending=False, method="min").astype(int)
    return table.sort_values(["keep", "rank"]).reset_index(drop=True)


__all__ = ["accuracy_table", "answer_after", "mcnemar_p", "paired_comparisons", "ranks", "run_task_eval",
           "stop_token_ids"]
