"""Building the TAPPA Book: execute the chapters with papermill, generate the reference page, render the HTML.

`layout` (the root, `_toc.yml`, the effective toc, `Target`: where a book is built), `params` (the chapters'
`parameters` cells and the README table), `execute` (papermill, failures reported with their cell), `reference`
(the generated reference page and the docstring checks), `ledger` (every claim's verdict, from the results),
`render` (jupyter-book; another model's book in its own folder), `nullbook` (the chapters on a random-weight model),
`html_check` (the rendered pages' check), `lab` (`make lab`), `parser` (the command line's options) and `cli` (one
handler per subcommand of `python -m tappa_utils.book build | null | execute | ledger | params-table | reference |
check-html | lab`, which `__main__` runs).
Only that command line and the tests use this package; the names below are re-exported.
"""
from __future__ import annotations

from .execute import HIDDEN_TAGS, NotebookFailure, execute_chapters, execute_notebook, hide_parameter_cells
from .layout import (
                     EXECUTED_DIR,
                     FAILED_DIR,
                     GENERATED_DIR,
                     NOTEBOOKS_DIR,
                     RESULTS_DIR,
                     BookError,
                     Target,
                     chapter_stems,
                     effective_toc,
                     existing_chapters,
                     find_root,
                     notebook_path,
                     toc_files,
                     write_effective_toc,
)
from .ledger import ChapterResults, ledger_markdown, ledger_row_status, model_label, read_results, write_ledger
from .params import (
                     README_END,
                     README_START,
                     REQUIRED_PARAMETERS,
                     Parameter,
                     bench_parameters,
                     notebook_parameters,
                     parameters_cell,
                     params_table,
                     parse_parameters,
                     readme_params_table,
                     smoke_parameters,
                     update_readme,
)
from .reference import (
                     command_help,
                     missing_docstrings,
                     package_modules,
                     public_objects,
                     reference_markdown,
                     write_reference,
)
from .render import RunOptions, book_title, build, read_build_record, render_html

__all__ = ["EXECUTED_DIR", "FAILED_DIR", "GENERATED_DIR", "HIDDEN_TAGS", "NOTEBOOKS_DIR", "README_END",
           "README_START", "REQUIRED_PARAMETERS", "RESULTS_DIR", "BookError", "ChapterResults", "NotebookFailure",
           "Parameter", "RunOptions", "Target", "bench_parameters", "book_title", "build", "chapter_stems",
           "command_help", "effective_toc", "execute_chapters", "execute_notebook", "existing_chapters", "find_root",
           "hide_parameter_cells", "ledger_markdown", "ledger_row_status", "missing_docstrings", "model_label",
           "notebook_parameters", "notebook_path", "package_modules", "parameters_cell", "params_table",
           "parse_parameters", "public_objects", "read_build_record", "read_results", "readme_params_table",
           "reference_markdown", "render_html", "smoke_parameters", "toc_files", "update_readme",
           "write_effective_toc", "write_ledger", "write_reference"]
