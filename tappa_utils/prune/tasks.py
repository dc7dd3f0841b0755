"""Short tasks for pruned models: greedy answers to factual / cloze prompts and a short pass-key retrieval.

    sets = task_sets(tokenizer, families=("facts", "passkey"), n=24, seed=0)    # {family: TaskSet}, seeded, offline
    correct = task_correct(model, sets["facts"], removed=[20, 22])              # (N,) 0/1, greedy answers

Every prompt goes through the tokenizer's chat template (a plain "question\\n" without one) and ends with an
**answer prefix** in the assistant's turn ("The capital of France is"), as RULER's templates do, so that the answer
is the first thing the model writes. A prompt counts as correct when the model's **greedy** continuation of the
prefix starts with the expected answer's tokens. That is decided exactly from one forward pass over the prompt
followed by the answer (teacher forcing): greedy decoding writes the answer if and only if each answer token is the
argmax after the prompt and the answer tokens before it. No generation loop is needed, so the pruned forwards can
start from stored hidden states (`prefix.PrefixStates`) like the loss evaluation.

Families (`FAMILIES`; the phrasings are this module's own):

- `facts`: capitals, opposites, the day after a weekday, sums of two digits (a fixed bank plus seeded sums).
- `passkey`: the KV comparison's `needle_passkey` task (`long_tasks`: a five-digit pass key at a depth of 0, 1/4, ...,
  1 in held-out English, asked after the text); `passkey_tokens` sets the length (the calibration split is never
  used). Until stop 37 this family had its own generator, a bare "The pass key is N." sentence in the docs text,
  which the unpruned SmolLM2 answered only 0.46 of the time (it took the sentence for Python documentation).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

FAMILIES = ("facts", "passkey")
PASSKEY_PREFIX = "The pass key for today is"

_CAPITALS = (("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
             ("Russia", "Moscow"), ("Egypt", "Cairo"), ("China", "Beijing"), ("Greece", "Athens"),
             ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Norway", "Oslo"),
             ("Poland", "Warsaw"), ("England", "London"), ("Sweden", "Stockholm"))
_OPPOSITES = (("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("fast", "slow"),
              ("happy", "sad"), ("light", "dark"), ("wet", "dry"), ("old", "young"), ("early", "late"))
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class Prompt:
    """One task prompt: the user's question, the assistant's answer prefix and the expected answer."""

    family: str
    question: str
    prefix: str
    answer: str


def _fact_bank() -> list[Prompt]:
    out = [Prompt("facts", f"What is the capital of {c}? Answer with one word.", f"The capital of {c} is", a)
           for c, a in _CAPITALS]
    out += [Prompt("facts", f"What is the opposite of {w}? Answer with one word.", f"The opposite of {w} is", a)
            for w, a in _OPPOSITES]
    out += [Prompt("facts", f"Which day of the week comes after {d}? Answer with one word.",
                   f"The day after {d} is", _DAYS[(i + 1) % 7]) for i, d in enumerate(_DAYS)]
    return out


def fact_prompts(n: int, seed: int = 0) -> list[Prompt]:
    """`n` factual prompts: the bank in a seeded order, then seeded sums of two digits (a + b, both 1..9)."""
    rng = random.Random(seed)
    bank = _fact_bank()
    rng.shuffle(bank)
    out = bank[:n]
    while len(out) < n:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append(Prompt("facts", f"What is {a} plus {b}? Answer with the number only.", f"{a} plus {b} is",
                          str(a + b)))
    return out


def passkey_prompts(tokenizer, n: int, n_tokens: int = 160, seed: int = 0) -> list[Prompt]:
    """`n` pass-key prompts: `long_tasks`' `needle_passkey` samples of `n_tokens` tokens (the KV comparison's task,
    held-out filler, the needle at the depths `long_tasks.DEPTHS` in turn), answered after "The pass key for today is".
    """
    from ..long_tasks import make_suite

    return [Prompt("passkey", s.prompt, PASSKEY_PREFIX, s.answer)
            for s in make_suite(["needle_passkey"], tokenizer, [n_tokens], n, seed)]


@dataclass
class TaskSet:
    """Prompts encoded for teacher-forced greedy checking.

    `ids` (N, T): prompt + answer tokens, right-padded (padding never affects earlier positions in a causal model);
    `checks[i]`: the positions whose argmax must equal `targets[i]` (the next tokens) for prompt i to be correct.
    """

    prompts: list[Prompt]
    ids: torch.Tensor
    checks: list[list[int]]
    targets: list[list[int]]

    @property
    def families(self) -> np.ndarray:
        """(N,) the family of each prompt."""
        return np.array([p.family for p in self.prompts])


def encode_prompt(tokenizer, p: Prompt) -> tuple[list[int], int]:
    """(ids of prompt + answer, n): the first n ids are the prompt up to the answer prefix, the rest the answer."""
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template([{"role": "user", "content": p.question}], tokenize=False,
                                             add_generation_prompt=True)
        special = False
    else:
        head, special = p.question + "\n", True
    text = head + p.prefix
    a = list(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])
    b = list(tokenizer(text + " " + p.answer, add_special_tokens=special, verbose=False)["input_ids"])
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if n == 0 or n >= len(b):
        raise ValueError(f"cannot separate the answer {p.answer!r} from its prompt in this tokenizer")
    return b, n


def encode_prompts(tokenizer, prompts: list[Prompt]) -> TaskSet:
    """Prompts encoded into one right-padded batch (`TaskSet`)."""
    enc = [encode_prompt(tokenizer, p) for p in prompts]
    T = max(len(ids) for ids, _ in enc) - 1  # the last answer token is only a target
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    rows, checks, targets = [], [], []
    for ids, k in enc:
        rows.append(ids[:-1] + [pad] * (T - len(ids) + 1))
        checks.append(list(range(k - 1, len(ids) - 1)))
        targets.append(ids[k:])
    return TaskSet(list(prompts), torch.tensor(rows, dtype=torch.long), checks, targets)


def task_sets(tokenizer, families=("facts",), n: int = 24, seed: int = 0,
              passkey_tokens: int = 160) -> dict[str, TaskSet]:
    """{family: `TaskSet` of `n` prompts} for each family of `families` (`FAMILIES`); one batch per family, so
    short prompts are not padded to the long ones' length."""
    families = list(families)
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise ValueError(f"task families must be a non-empty list from {', '.join(FAMILIES)} (got {families!r})")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of prompts per family must be an int >= 1 (got {n!r})")
    return {f: encode_prompts(tokenizer, fact_prompts(n, seed) if f == "facts"
                              else passkey_prompts(tokenizer, n, passkey_tokens, seed)) for f in families}


@torch.no_grad()
def task_correct(model, ts: TaskSet, removed=(), batch_size: int = 8, prefix=None) -> np.ndarray:
    """(N,) 1 where the greedy answer of `model` without decoder layers `removed` starts with the expected answer."""
    from .prefix import pruned_logits

    positions = sorted({i for c in ts.checks for i in c})
    col = {p: j for j, p in enumerate(positions)}
    out, row = np.zeros(len(ts.prompts), dtype=np.int64), 0
    for _, logits in pruned_logits(model, removed, ts.ids, batch_size, prefix, torch.tensor(positions)):
        pred = logits.argmax(-1).cpu()
        for b in range(pred.shape[0]):
            got = [int(pred[b, col[p]]) for p in ts.checks[row]]
            out[row] = int(got == ts.targets[row])
            row += 1
    return out
