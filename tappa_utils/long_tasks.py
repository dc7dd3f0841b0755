"""Offline, seeded, RULER-like long-context tasks to judge KV-cache compression and layer pruning.

Every sample is a `Sample`: a `context` (what a press may compress) and a separate `question` that comes after it
(kvpress's context / question split, so the question is never compressed), the expected `answer`, the requested
`depth` and length, and the `seed` that rebuilds it. `make_sample` builds one, `make_suite` a grid, `chat_prompt`
turns one into (context ids, question ids) through the tokenizer's chat template, and `score` grades an answer.

Tasks (`TASKS`; the phrasings and generators are this module's own):

- `needle_passkey`, `needle_number`, `needle_word`: one needle sentence (a 5-digit pass key, a 7-digit number or a
  code word tied to a key such as "the silver lantern") inserted at `depth` into real English filler.
- `multikey`: the asked needle at `depth` plus three needles of other keys (distractors) at random depths.
- `multivalue`: four needles of the same key with different numbers; all four are the answer.
- `variable_tracking`: a chain "VAR A = 12345." ... "VAR B = VAR A." ... (four variables, the first at `depth`,
  the others later, in order) plus a distractor chain; the answer is every variable holding the value.
- `common_words`: a numbered list of words; the three most frequent ones are the answer (no depth: `depth=None`).
- `qa`: cloze question answering over the real passage: a sentence of the context is quoted with one word blanked,
  and the missing word (at `depth` in the context) is the answer.

**Text.** Filler and passages are the prose paragraphs of Python's own documentation, `pydoc_data.topics` (shipped
with every Python, so offline; the text follows the running Python version). Paragraphs are unwrapped; code,
grammar, tables, headings and version notes are dropped; typographic quotes and dashes become ASCII. **Split:** a
topic is *calibration* when the SHA-256 of its key is divisible by 4 (about a quarter of the topics), otherwise
*held-out*; held-out paragraphs that share any 60-character stretch with the calibration text, or repeat an
earlier held-out paragraph, are dropped. Tasks use only `heldout_text()`; `calibration_text()` is for calibrating
(q-similarity, pruning scores). Each sample's filler is the held-out paragraphs in a seeded order (repeating only
beyond the ~100k held-out characters).

**Length.** `target_tokens` counts `sample.prompt` (context + `QUESTION_SEP` + question) in the given tokenizer's
tokens without special tokens; the filler is cut at a word or sentence boundary so the count lands within 2 % of
the target (`n_tokens` holds the count). A chat template adds its own tokens on top.

**Depth.** `depth` d in [0, 1], in tokens: a fraction d of the filler's tokens (the context without the inserted
needles) comes before the asked needle, which starts at character `sample.needle_start` (at a word start, or at a
sentence start within 1 % of the filler). For `qa`, d of the context's tokens come before the answer word.

**Limits.** `qa` needs the context shorter than the held-out text (its quote must occur once); `common_words` has
~1400 distinct words, so beyond ~2000 entries the rare words come up to a few times each (still far below the
three frequent ones).
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

from .data import is_calibration_topic

TASKS = ("needle_passkey", "needle_number", "needle_word", "multikey", "multivalue", "variable_tracking",
         "common_words", "qa")
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
QUESTION_SEP = "\n\n"
LENGTH_TOLERANCE = 0.02

MIN_TARGET_TOKENS = 64

_ASCII = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...",
                        "\u2014": "--", "\u2013": "-"})
_ADJECTIVES = ("amber", "brave", "bright", "cobalt", "copper", "crimson", "dusty", "emerald", "frozen", "gentle",
               "golden", "hidden", "hollow", "ivory", "jolly", "lucky", "misty", "noble", "olive", "quiet", "rusty",
               "scarlet", "silent", "silver", "sleepy", "tidy", "velvet", "wooden", "young", "zesty")
_NOUNS = ("badger", "beacon", "canyon", "cellar", "comet", "falcon", "garden", "harbor", "island", "kettle",
          "lantern", "meadow", "mirror", "orchard", "otter", "parrot", "pebble", "quarry", "river", "saddle", "tiger",
          "tower", "tulip", "violin", "wagon", "walrus", "willow", "yacht", "zebra", "acorn")
_CODE_WORDS = ("apricot", "avalanche", "bamboo", "blizzard", "buffalo", "cactus", "cinnamon", "coconut", "daffodil",
               "dolphin", "eucalyptus", "flamingo", "gardenia", "giraffe", "hazelnut", "hedgehog", "jasmine",
               "kangaroo", "lavender", "lobster", "magnolia", "mandarin", "marmalade", "nutmeg", "octopus", "papaya",
               "peacock", "pelican", "pistachio", "porcupine", "raspberry", "saffron", "salamander", "sardine",
               "tangerine", "thistle", "toucan", "trombone", "turquoise", "vanilla", "volcano", "waffle", "walnut",
               "wombat", "zucchini")
_STOPWORDS = frozenset("""a an and are as at be been but by can could does each for from has have if in into is it
its may might must not of on only or other over same should such than that the their them then there these they
this those through to under was were when where which while will with would also both more most some what""".split())


# ----------------------------------------------------------------------------------------------------------- text

def _prose(text: str) -> list[str]:
    """The prose paragraphs of one topic, unwrapped and made ASCII (code, grammar, tables, headings dropped)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if not block.strip() or lines[0][:1].isspace():
            continue
        p = re.sub(r"\s+", " ", " ".join(line.strip() for line in lines).translate(_ASCII)).strip()
        if len(p) < 80 or p[-1] not in ".:" or not p.isascii() or "::=" in p or ">>>" in p:
            continue
        if re.match(r"(Changed|Added|New) in version|Deprecated since", p) or re.search(r"[*=\-^~+|]{4}", p):
            continue
        out.append(p)
    return out


def _is_calibration(topic: str) -> bool:
    return is_calibration_topic(topic)  # the split every calibration in the book uses (`tappa_utils.data`)


@functools.lru_cache(maxsize=1)
def _split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(calibration paragraphs, held-out paragraphs) of `pydoc_data.topics`, as described in the module docstring."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    calib = [p for key in sorted(topics) if _is_calibration(key) for p in _prose(topics[key])]
    text = "\n".join(calib)
    shingles = {text[i:i + 60] for i in range(len(text) - 59)}
    held: list[str] = []
    for key in sorted(topics):
        if _is_calibration(key):
            continue
        for p in _prose(topics[key]):
            if p not in held and not any(p[i:i + 60] in shingles for i in range(len(p) - 59)):
                held.append(p)
    return tuple(calib), tuple(held)


def calibration_text() -> str:
    """The calibration part of the documentation prose (paragraphs joined by newlines); no task uses it."""
    return "\n".join(_split()[0])


def heldout_text() -> str:
    """The held-out part of the documentation prose (paragraphs joined by newlines): the tasks' only text."""
    return "\n".join(_split()[1])


def heldout_paragraphs() -> tuple[str, ...]:
    """The held-out paragraphs, in topic order."""
    return _split()[1]


@functools.lru_cache(maxsize=1)
def _heldout_words() -> frozenset[str]:
    return frozenset(re.findall(r"[a-z]+", heldout_text().lower()))


@functools.lru_cache(maxsize=1)
def _list_words() -> tuple[str, ...]:
    """Candidate words for `common_words`: lower-case held-out words of 4 to 10 letters, sorted."""
    return tuple(sorted(w for w in _heldout_words() if 4 <= len(w) <= 10 and w not in _STOPWORDS))


def _code_words() -> tuple[str, ...]:
    return tuple(w for w in _CODE_WORDS if w not in _heldout_words())


class _Filler:
    """The held-out paragraphs in a seeded order, extended (re-shuffled) on demand; `cut(n)` gives <= n chars."""

    def __init__(self, rng: random.Random):
        self.rng, self.text, self._starts = rng, "", ([], 0)

    def token_starts(self, tokenizer, n: int) -> list[int]:
        """Start characters of the tokens of the first n characters (a prefix of the text is tokenized once)."""
        if n + 200 > self._starts[1] and self._starts[1] < len(self.text):
            upto = min(len(self.text), 2 * n + 1000)
            self._starts = (_token_starts(tokenizer, self.text[:upto]), upto)
        return self._starts[0][:bisect.bisect_left(self._starts[0], n)]

    def extend(self, n: int) -> str:
        """The text, made at least n characters long."""
        while len(self.text) < n:
            paragraphs = list(heldout_paragraphs())
            self.rng.shuffle(paragraphs)
            self.text += ("\n" if self.text else "") + "\n".join(paragraphs)
        return self.text

    def cut(self, n: int, exact: bool = False) -> str:
        """The first <= n characters, ending at a sentence end near n if there is one, else at a word end
        (`exact`: at character n, a last resort when no word end gives the length)."""
        self.extend(n + 1)
        if n <= 0:
            return ""
        if exact:
            return self.text[:n].rstrip()
        head = self.text[:n]
        if n < len(self.text) and not self.text[n].isspace():
            head = re.sub(r"\S*$", "", head)  # drop the partial last word
        head = head.rstrip()
        lo = max(0, len(head) - max(8, n // 200))
        end = max(head.rfind(". ", lo), head.rfind(".\n", lo))
        return head if head.endswith(".") or end < 0 else head[:end + 1]


# ------------------------------------------------------------------------------------------------------- samples

@dataclass(frozen=True)
class Sample:
    """One long-context sample: the context (compressible), the question after it, and the expected answer.

    `answer` is a string, or a list whose items must all appear (multivalue, variable_tracking, common_words).
    `needles` are the sentences inserted into the filler, the asked one first; `needle_start` is the character offset
    of the asked needle (of the answer word for `qa`, None for `common_words`); `n_tokens` is the measured length of
    `prompt` in the tokenizer the sample was made with.
    """

    task: str
    target_tokens: int
    depth: float | None
    context: str
    question: str
    answer: str | list[str]
    seed: int
    n_tokens: int = 0
    needles: tuple[str, ...] = ()
    needle_start: int | None = None

    @property
    def prompt(self) -> str:
        """The user's text: context, `QUESTION_SEP`, question."""
        return self.context + QUESTION_SEP + self.question


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _word_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer(r"\s+", text)] if text else [0]


def _token_starts(tokenizer, text: str) -> list[int]:
    """The start character of each token of `text` (of each character when the tokenizer gives no offsets)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [int(a) for a, _ in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError, KeyError):
        return list(range(len(text)))


def _insert(filler: str, needles: list[tuple[float, str]], tokens: list[int]) -> tuple[str, list[int]]:
    """Insert each (fraction, text) at the word start nearest the filler's token number fraction x len(tokens)
    (`tokens`: the tokens' start characters), or at a sentence start within 1 % of the filler; returns the context
    and each needle's start offset, in the given order. Needles at the same spot keep their order."""
    starts = _word_starts(filler) + [len(filler)]
    sentence = {m.end() for m in re.finditer(r"(?:[.:] |\n)", filler)} | {0, len(filler)}
    slack = max(2, int(0.01 * len(filler)))
    spots = []
    for frac, _ in needles:
        k = round(frac * len(tokens))
        want = tokens[k] if k < len(tokens) else len(filler)
        near = [s for s in sentence if abs(s - want) <= slack]
        spots.append(min(near or starts, key=lambda s: (abs(s - want), s)))
    order = sorted(range(len(needles)), key=lambda i: (spots[i], i))
    pieces, offsets, prev, length = [], [0] * len(needles), 0, 0
    for i in order:
        chunk = filler[prev:spots[i]]
        pieces.append(chunk)
        length += len(chunk)
        prev = spots[i]
        if spots[i] == len(filler) and filler:
            pieces.append(" ")
            length += 1
        offsets[i] = length
        text = needles[i][1] + ("" if spots[i] == len(filler) and filler else " ")
        pieces.append(text)
        length += len(text)
    pieces.append(filler[prev:])
    context = "".join(pieces)
    return context.rstrip(), offsets


def _fit(build: Callable[..., tuple[str, str, dict]], tokenizer, target: int, guess: int,
         what: str, exact: bool = False) -> tuple[str, str, dict, int]:
    """Find the size whose built (context, question) measures `target` tokens (within LENGTH_TOLERANCE).

    `exact`: `build(size, exact=True)` cuts at any character, tried only when no size of `build(size)` fits."""
    def measure(size, cut_exact=False):
        context, question, extra = build(size, exact=True) if cut_exact else build(size)
        return _count(tokenizer, context + QUESTION_SEP + question), (context, question, extra)

    n0, _ = measure(0)
    if n0 > target * (1 - LENGTH_TOLERANCE):
        raise ValueError(f"target_tokens={target} is too short for {what}: its fixed text alone is {n0} tokens; "
                         f"use target_tokens >= {int(n0 * 1.2) + 16}")
    best = None
    points = [(0, n0)]
    size = max(1, guess)
    for _ in range(12):
        n, built = measure(size)
        if best is None or abs(n - target) < abs(best[0] - target):
            best, best_size = (n, built), size
        points.append((size, n))
        if abs(n - target) <= max(2, target // 200):
            break
        (s0, m0), (s1, m1) = sorted(points, key=lambda p: abs(p[1] - target))[:2]
        rate = (m1 - m0) / (s1 - s0) if s1 != s0 and m1 != m0 else max(n - n0, 1) / max(size, 1)
        new = max(1, round(size + (target - n) / max(rate, 1e-6)))
        size = new if new != size else size + (1 if n < target else -1)
        if size in (p[0] for p in points):  # a cycle between two cuts: keep the best so far
            break
    if abs(best[0] - target) > LENGTH_TOLERANCE * target:
        # the secant steps jumped over every cut within the tolerance (coarse tokens such as bytes at short
        # lengths, long words): walk one character at a time from the best size towards the target until it is
        # crossed, at word ends; then (`exact`) bisect the size of a cut at any character
        step, size = (1 if best[0] < target else -1), best_size
        for _ in range(400):
            size += step
            n, built = measure(size)
            if abs(n - target) < abs(best[0] - target):
                best = (n, built)
            if abs(best[0] - target) <= LENGTH_TOLERANCE * target or (n - target) * step > 0 or size <= 1:
                break
        lo, hi = 1, 4 * max(size, best_size) + 64
        while exact and lo < hi and abs(best[0] - target) > LENGTH_TOLERANCE * target:
            mid = (lo + hi) // 2
            n, built = measure(mid, True)
            if abs(n - target) < abs(best[0] - target):
                best = (n, built)
            lo, hi = (mid + 1, hi) if n < target else (lo, mid)
    n, (context, question, extra) = best
    if abs(n - target) > LENGTH_TOLERANCE * target:
        raise RuntimeError(f"could not fit {what} to {target} tokens (closest {n}); report this seed")
    return context, question, extra, n


def _key(rng: random.Random, used: set[str]) -> str:
    while True:
        key = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        if key not in used:
            used.add(key)
            return key


def _number(rng: random.Random, digits: int, used: set[str]) -> str:
    text = heldout_text()
    while True:
        value = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
        if value not in used and value not in text:
            used.add(value)
            return value


def _var_name(rng: random.Random, used: set[str]) -> str:
    text = heldout_text()
    while True:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in used and name not in text:
            used.add(name)
            return name


def _needle_task(task: str, rng: random.Random, depth: float) -> tuple[list[tuple[float, str]], str, str | list]:
    """(needles as (fraction, sentence) with the asked one first, question, answer) of a needle task."""
    keys: set[str] = set()
    values: set[str] = set()
    if task == "needle_passkey":
        value = _number(rng, 5, values)
        return ([(depth, f"Note: the pass key for today is {value}.")],
                "What is the pass key for today? Answer with the number only.", value)
    if task == "needle_word":
        key, word = _key(rng, keys), rng.choice(_code_words())
        return ([(depth, f"The code word of {key} is {word}.")],
                f"What is the code word of {key}? Answer with the word only.", word)
    if task in ("needle_number", "multikey"):
        key, value = _key(rng, keys), _number(rng, 7, values)
        needles = [(depth, f"The secret number of {key} is {value}.")]
        for _ in range(3 if task == "multikey" else 0):
            needles.append((rng.random(), f"The secret number of {_key(rng, keys)} is {_number(rng, 7, values)}."))
        return needles, f"What is the secret number of {key}? Answer with the number only.", value
    if task == "multivalue":
        key = _key(rng, keys)
        answer = [_number(rng, 7, values) for _ in range(4)]
        fracs = [depth] + [rng.random() for _ in range(3)]
        return ([(f, f"One of the secret numbers of {key} is {v}.") for f, v in zip(fracs, answer)],
                f"The text above gives four secret numbers of {key}. What are they? Answer with the numbers only.",
                answer)
    # variable_tracking
    names: set[str] = set()
    chains = []
    for start in (depth, None):
        value = _number(rng, 5, values)
        chain = [_var_name(rng, names) for _ in range(4)]
        lo = rng.random() * 0.5 if start is None else start
        fracs = [lo] + sorted(lo + (1 - lo) * rng.random() for _ in range(3))
        text = [f"VAR {chain[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in pairwise(chain)]
        chains.append((value, chain, list(zip(fracs, text))))
    (value, chain, needles), (_, _, distractors) = chains
    question = f"Which variables hold the value {value} after all the assignments above? Answer with the names only."
    return needles + distractors, question, chain


def _common_words(rng: random.Random, n_entries: int) -> tuple[str, list[str]]:
    """A numbered list of `n_entries` words: three words max(5, 4 % of the entries) times each, the others 1 to m
    times (m = 2, more only when the word pool runs short: m = 2 n / pool)."""
    pool = list(_list_words())
    rng.shuffle(pool)
    common, rest = pool[:3], iter(pool[3:])
    freq = max(5, round(0.04 * n_entries))
    most = max(2, -(-2 * n_entries // len(pool)))
    if 2 * most >= freq:
        raise ValueError(f"common_words with {n_entries} entries needs more distinct words than the held-out text "
                         f"has ({len(pool)}); use a shorter target_tokens")
    entries = [w for w in common for _ in range(freq)]
    while len(entries) < n_entries:
        word = next(rest)
        entries += [word] * min(rng.randint(1, most), n_entries - len(entries))
    rng.shuffle(entries)
    head = "Below is a numbered list of words. Some words appear more than once.\n"
    return head + "\n".join(f"{i + 1}. {w}" for i, w in enumerate(entries)), common


_CWE_QUESTION = "Which three words appear most often in the numbered list above? Answer with the three words only."
_QA_WORD = re.compile(r"(?<=[ (\n])([A-Za-z]{4,})(?=[ ,.;:)\n])")
_QA_QUESTION = 'In the text above, which word is missing in this sentence: "{}"? Answer with the missing word only.'


def _cloze(text: str, start: int, max_left: int, max_right: int, reach: int) -> tuple[int, int, int] | None:
    """(quote start, word start, quote end) of the first content word at or after `start` whose sentence can be
    quoted around it (up to 12 words a side, at most max_left / max_right characters, >= 6 words besides it) and
    whose quote occurs once within `reach` characters of it."""
    for m in _QA_WORD.finditer(text, start):
        if m.group(1).lower() in _STOPWORDS:
            continue
        lo = max(text.rfind(". ", 0, m.start()) + 2, text.rfind("\n", 0, m.start()) + 1, m.start() - max_left)
        ends = [e for e in (text.find(". ", m.end()), text.find("\n", m.end())) if e >= 0]
        hi = min(ends + [len(text), m.end() + max_right])
        left = [w.start() for w in re.finditer(r"(?<!\S)\S+", text[lo:m.start()])][-12:]
        right = [w.end() for w in re.finditer(r"\S+(?!\S)", text[m.end():hi])][:12]
        if len(left) + len(right) >= 6:
            q0, q1 = lo + (left[0] if left else m.start() - lo), m.end() + (right[-1] if right else 0)
            if text.count(text[q0:q1], max(0, m.start() - reach), m.start() + reach) == 1:
                return q0, m.start(), q1
    return None


def _check(task: str, tokenizer, target_tokens: int, depth: float | None, seed: int) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if not callable(tokenizer):
        raise TypeError("tokenizer must be a Hugging Face tokenizer (callable on text)")
    if isinstance(target_tokens, bool) or not isinstance(target_tokens, int) or target_tokens < MIN_TARGET_TOKENS:
        raise ValueError(f"target_tokens must be an int >= {MIN_TARGET_TOKENS} (got {target_tokens!r})")
    if task == "common_words":
        if depth is not None:
            raise ValueError("common_words has no needle: pass depth=None")
    elif isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be a number in [0, 1] for {task} (got {depth!r})")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int (got {seed!r})")


def make_sample(task: str, tokenizer, target_tokens: int, depth: float | None, seed: int) -> Sample:
    """One sample of `task` whose prompt is `target_tokens` tokens (within 2 %) with its needle at `depth`.

    The same arguments give the same sample; `depth` must be None for `common_words`.
    """
    _check(task, tokenizer, target_tokens, depth, seed)
    depth = None if depth is None else float(depth)
    rng = random.Random(f"{task}:{seed}")
    chars_per_token = len(heldout_text()[:4000]) / max(1, _count(tokenizer, heldout_text()[:4000]))
    if task == "common_words":
        state = rng.getstate()

        def build(size):
            rng.setstate(state)
            context, common = _common_words(rng, size)
            return context, _CWE_QUESTION, {"answer": common}

        per_entry = _count(tokenizer, "\n123. example") or 1
        context, question, extra, n = _fit(build, tokenizer, target_tokens, target_tokens // per_entry, task)
        return Sample(task, target_tokens, None, context, question, extra["answer"], seed, n)
    guess = round(target_tokens * chars_per_token)
    if task == "qa":
        return _make_qa(tokenizer, target_tokens, depth, seed, chars_per_token)
    filler = _Filler(random.Random(f"filler:{task}:{seed}"))
    needles, question, answer = _needle_task(task, rng, depth)

    def build(size, exact=False):
        text = filler.cut(size, exact)
        context, offsets = _insert(text, needles, filler.token_starts(tokenizer, len(text)))
        return context, question, {"answer": answer, "start": offsets[0]}

    context, question, extra, n = _fit(build, tokenizer, target_tokens, guess, task, exact=True)
    return Sample(task, target_tokens, depth, context, question, answer, seed, n, tuple(t for _, t in needles),
                  extra["start"])


def _edge(tokenizer, text: str, at: int, k: int, cpt: float, forward: bool) -> int:
    """The character k tokens after (`forward`) or before `at` in `text`, tokenizing only a slice around it."""
    span = int(k * cpt * 1.5) + 64
    while True:
        lo, hi = (at, min(len(text), at + span)) if forward else (max(0, at - span), at)
        starts = _token_starts(tokenizer, text[lo:hi])
        if forward and (k < len(starts) or hi == len(text)):
            return lo + starts[k] if k < len(starts) else hi
        if not forward and (k < len(starts) or lo == 0):  # k + 1 tokens: the slice's first may be cut
            return at if k == 0 else lo + starts[-k] if k <= len(starts) else lo
        span *= 2


def _make_qa(tokenizer, target_tokens: int, depth: float, seed: int, cpt: float) -> Sample:
    """A `qa` sample: a quotable word (the anchor) is chosen in the seeded filler first; the context is the window
    of filler around it with `depth` of its tokens before the anchor, sized to the target. A filler order whose
    quote does not fit in the window (or repeats) is replaced by the next."""
    chars = int(target_tokens * cpt)
    for attempt in range(20):
        text = _Filler(random.Random(f"filler:qa:{seed}:{attempt}")).extend(4 * chars + 4000)
        found = _cloze(text, int(depth * 2 * chars) + 200, int(0.7 * depth * chars), int(0.7 * (1 - depth) * chars),
                       2 * chars)
        if found is None:
            continue
        q0, anchor, q1 = found
        word = _QA_WORD.match(text, anchor).group(1)
        question = _QA_QUESTION.format(text[q0:anchor] + "____" + text[anchor + len(word):q1])

        def build(size, anchor=anchor, word=word, question=question, text=text):
            before = round(depth * size)
            lo = _edge(tokenizer, text, anchor, before, cpt, forward=False)
            hi = _edge(tokenizer, text, anchor, max(0, size - before), cpt, forward=True)
            lo = lo if lo == 0 or text[lo - 1].isspace() else lo + len(re.match(r"\S*\s*", text[lo:]).group())
            hi = hi if hi >= len(text) or text[hi].isspace() else hi - len(re.search(r"\S*$", text[:hi]).group())
            lo, hi = min(lo, anchor), max(hi, anchor + len(word))
            return text[lo:hi].rstrip(), question, {"offset": anchor - lo}

        guess = max(1, target_tokens - _count(tokenizer, QUESTION_SEP + question))
        context, question, extra, n = _fit(build, tokenizer, target_tokens, guess, "qa")
        if context.count(text[q0:q1]) == 1:
            return Sample("qa", target_tokens, depth, context, question, word, seed, n, (), extra["offset"])
    raise RuntimeError(f"no askable word near depth {depth} in 20 filler orders (seed {seed}); try another seed")


def _sample_seed(seed: int, task: str, length: int, i: int) -> int:
    return int(hashlib.sha256(f"{seed}:{task}:{length}:{i}".encode()).hexdigest()[:8], 16)


def make_suite(tasks, tokenizer, lengths, n: int, seed: int, depths=DEPTHS) -> list[Sample]:
    """`n` samples per task and length; sample i of a needle task sits at `depths[i % len(depths)]`.

    Each sample's own seed is derived from (seed, task, length, i), so suites with different `n` share samples.
    """
    tasks, lengths, depths = list(tasks), list(lengths), list(depths)
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"tasks must be a non-empty list from {', '.join(TASKS)} (got {tasks!r})")
    if not lengths or any(isinstance(x, bool) or not isinstance(x, int) or x < MIN_TARGET_TOKENS for x in lengths):
        raise ValueError(f"lengths must be a non-empty list of ints >= {MIN_TARGET_TOKENS} (got {lengths!r})")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1 (got {n!r})")
    if not depths or any(not isinstance(d, (int, float)) or not 0 <= d <= 1 for d in depths):
        raise ValueError(f"depths must be a non-empty list of numbers in [0, 1] (got {depths!r})")
    return [make_sample(task, tokenizer, length, None if task == "common_words" else depths[i % len(depths)],
                        _sample_seed(seed, task, length, i))
            for task in tasks for length in lengths for i in range(n)]


# ------------------------------------------------------------------------------------------------ prompt, score

def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])


def chat_prompt(tokenizer, sample: Sample) -> tuple[list[int], list[int]]:
    """(context_ids, question_ids) of a sample: feed the first to the (compressed) prefill, the second after it.

    With a chat template the user turn is `sample.prompt` and the generation prompt is added; the text is cut where
    `QUESTION_SEP + question` starts, so `question_ids` hold the question, the end of the turn and the assistant
    prefix. Without a template: the context (with the tokenizer's leading special tokens, e.g. BOS) and
    `QUESTION_SEP + question`. The two parts are tokenized separately (as kvpress does). Wrap them in
    `torch.tensor([ids])` for `kv.decoding`.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": sample.prompt}], tokenize=False,
                                             add_generation_prompt=True)
        cut = text.rfind(QUESTION_SEP + sample.question)
        if cut < 0 or text.find(sample.context) < 0:
            raise ValueError("the chat template altered the context or question text; cannot split it")
        return _encode(tokenizer, text[:cut], False), _encode(tokenizer, text[cut:], False)
    plain, full = _encode(tokenizer, sample.context, False), _encode(tokenizer, sample.context, True)
    lead = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    return full[:lead] + plain, _encode(tokenizer, QUESTION_SEP + sample.question, False)


def normalize(text: str) -> str:
    """Lower-case with runs of whitespace made one space, stripped."""
    return " ".join(text.lower().split())


def _contains(output: str, answer: str) -> bool:
    pattern = r"(?<![a-z0-9])" + re.escape(normalize(answer)) + r"(?![a-z0-9])"
    return re.search(pattern, normalize(output)) is not None


def score(answer_text: str, sample: Sample) -> float:
    """1.0 if the model's answer contains the expected answer, else 0.0 (for a list: every item must appear).

    Both are lower-cased and whitespace-normalised; an answer counts only as a whole word or number (not inside a
    longer one), so an exact answer, a padded one ("  The pass key is 71432. ") and a case-changed one all score 1.

    >>> s = Sample("needle_passkey", 64, 0.5, "...", "What is the pass key?", "71432", 0)
    >>> score("  The pass key is 71432.\\n", s), score("714329", s)
    (1.0, 0.0)
    """
    if not isinstance(answer_text, str):
        raise TypeError(f"answer_text must be a str (got {type(answer_text).__name__})")
    answers = [sample.answer] if isinstance(sample.answer, str) else list(sample.answer)
    return float(all(_contains(answer_text, a) for a in answers))
