"""`python -m tappa_utils prune-eval`: run a pruning evaluation (`evaluate`) and write its report (`report`)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from . import evaluate
from . import scores as P
from .evaluate import PAPER_TASKS, PruneEvalConfig, run_pruning_eval
from .report import save_results, summary_table


def _floats(s: str) -> tuple:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The `prune-eval` command-line options."""
    from ..preflight import MODEL_FORMS, Parser

    d = PruneEvalConfig()
    ap = Parser(prog="python -m tappa_utils prune-eval", description=evaluate.__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--model", default=d.model, help=MODEL_FORMS)
    ap.add_argument("--device", default=d.device, help="torch device (cpu, cuda, cuda:1, ...)")
    ap.add_argument("--dtype", default=d.dtype, help="float32, bfloat16 or float16")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--seq-len", type=int, default=d.seq_len, help="chunk / window length in tokens")
    ap.add_argument("--calib-chunks", type=int, default=d.calib_chunks)
    ap.add_argument("--calib-stride", type=int, default=d.calib_stride)
    ap.add_argument("--calib-text-file", default=None, help="calibration text (default: training split)")
    ap.add_argument("--eval-text-file", default=None, help="evaluation text (default: held-out sample)")
    ap.add_argument("--eval-windows", type=int, default=d.eval_windows)
    ap.add_argument("--copy-windows", type=int, default=d.copy_windows)
    ap.add_argument("--copy-seg-len", type=int, default=d.copy_seg_len)
    ap.add_argument("--max-removed", type=int, default=d.max_removed)
    ap.add_argument("--betas", type=_floats, default=d.betas, help="comma-separated, e.g. 0.1,0.2,0.3")
    ap.add_argument("--beta-grid", type=_floats, default=d.beta_grid, help="betas tried on calibration data")
    ap.add_argument("--qsim-rope", choices=P.QSIM_ROPE, default=d.qsim_rope)
    ap.add_argument("--qsim-mode", choices=P.QSIM_MODES, default=d.qsim_mode)
    ap.add_argument("--bi-kind", choices=("cosine", "angular"), default=d.bi_kind,
                    help="block influence: 1 - cos (ShortGPT) or the angle / pi")
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lm-eval-tasks", default="",
                    help=f"comma-separated lm-eval tasks, e.g. {','.join(PAPER_TASKS)} (default: none)")
    ap.add_argument("--lm-eval-limit", type=int, default=d.lm_eval_limit)
    ap.add_argument("--tasks", default=",".join(d.tasks),
                    help="comma-separated task families answered greedily through the chat template "
                         "(facts, passkey; prune.tasks); empty: none")
    ap.add_argument("--task-prompts", type=int, default=d.task_prompts, help="prompts per task family")
    ap.add_argument("--passkey-tokens", type=int, default=d.passkey_tokens, help="pass-key text length in tokens")
    ap.add_argument("--random-draws", type=int, default=d.random_draws, help="control: random layer orders")
    ap.add_argument("--random-ks", type=_floats, default=(), help="k at which the random draws run (default all)")
    ap.add_argument("--no-figures", action="store_true")
    return ap


def _validate(cfg: PruneEvalConfig, n_layers: int | None = None) -> None:
    """`cfg.validate` with the options' names in its message (UsageError)."""
    from ..preflight import UsageError, one_line

    try:
        cfg.validate(n_layers, names=evaluate.OPTIONS)
    except (TypeError, ValueError) as e:
        raise UsageError(one_line(e)) from e


def _check_text_lengths(cfg: PruneEvalConfig, tokenizer) -> None:
    """UsageError when the calibration or evaluation text is too short (tokenizer alone: no weights loaded yet)."""
    from ..preflight import UsageError, one_line

    if tokenizer is None:
        return
    for option, file, build in (
            ("--calib-text-file", cfg.calib_text_file,
             lambda: P.calibration_ids(tokenizer, cfg.seq_len, cfg.calib_chunks, cfg.calib_stride, cfg.seed,
                                       cfg.calib_text_file, model=cfg.model)),
            ("--eval-text-file", cfg.eval_text_file, lambda: evaluate.eval_data(tokenizer, cfg))):
        try:
            build()
        except ValueError as e:
            where = f"{option} {file}" if file else f"the built-in text (or give {option})"
            raise UsageError(f"{where}: {one_line(e)} (--seq-len {cfg.seq_len})") from e


def main(argv: list[str] | None = None) -> int:
    """`prune-eval` entry point: 0 on success, 2 with one line on stderr for bad input (nothing written).

    Every input is checked before the model is loaded; results are built aside and swapped in whole at the end, so
    a second run into the same folder never mixes with the first (`tappa_utils.io.ResultDir`).
    """
    from .. import preflight as pf
    from ..io import ResultDir
    from ..models import UnsupportedModelError, load_model
    from ..results import save_run_info

    def body() -> int:
        args = build_parser().parse_args(argv)
        cfg = PruneEvalConfig(
            model=args.model, device=args.device, dtype=args.dtype, seed=args.seed, seq_len=args.seq_len,
            calib_chunks=args.calib_chunks, calib_stride=args.calib_stride, calib_text_file=args.calib_text_file,
            eval_text_file=args.eval_text_file, eval_windows=args.eval_windows, copy_windows=args.copy_windows,
            copy_seg_len=args.copy_seg_len, max_removed=args.max_removed, betas=args.betas,
            beta_grid=args.beta_grid, qsim_rope=args.qsim_rope, qsim_mode=args.qsim_mode, bi_kind=args.bi_kind,
            batch_size=args.batch_size, lm_eval_tasks=tuple(t for t in args.lm_eval_tasks.split(",") if t.strip()),
            lm_eval_limit=args.lm_eval_limit, tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
            task_prompts=args.task_prompts, passkey_tokens=args.passkey_tokens, random_draws=args.random_draws,
            random_ks=tuple(int(k) for k in args.random_ks))
        out = pf.check_out_dir(args.out, command="prune-eval")
        pf.check_text_file(cfg.calib_text_file, "--calib-text-file")
        pf.check_text_file(cfg.eval_text_file, "--eval-text-file")
        _validate(cfg)
        if cfg.lm_eval_tasks and not evaluate.lm_eval_available():
            raise pf.UsageError("--lm-eval-tasks needs the lm-eval harness, which is not installed: "
                                "pip install lm-eval, or leave out --lm-eval-tasks")
        pf.check_device(cfg.device)
        pf.check_dtype(cfg.dtype)
        info = pf.check_model(cfg.model)
        pf.check_context(cfg.seq_len, info)
        _validate(cfg, info.num_layers or None)  # --max-removed against the config's layers, before loading
        _check_text_lengths(cfg, pf.load_tokenizer(info))
        with ResultDir(out, "prune-eval") as tmp:
            model, tok = load_model(info.source, device=cfg.device, dtype=cfg.dtype)
            res = run_pruning_eval(cfg, model, tok, progress=lambda s: print(s, file=sys.stderr))
            save_results(res, tmp, figures=not args.no_figures)
            save_run_info(tmp, asdict(cfg), timings=res.timings, best_beta=res.best_beta)
        print(summary_table(res).round(4).to_string())
        print(f"best beta on calibration data: {res.best_beta:g}; results in {out}")
        return 0

    return pf.run_cli("prune-eval", body, (UnsupportedModelError, ValueError, TypeError, IndexError,
                                           FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
