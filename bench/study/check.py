"""`--check`: parse and instantiate every selected variant's config without fitting or loading data."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.study.args import build_args, run_dir
from bench.study.runner import Tee, error_line
from bench.study.spec import Study

__all__ = ["check_study"]


def check_study(
    study: Study, scale: str, extra: Mapping[str, Any] | None = None, only: Iterable[str] | None = None
) -> dict[str, str]:
    """Parse and instantiate every selected variant's config without fitting or loading data.

    The first variant goes through the full `CifarCLI` (model, data module, callbacks, trainer); the
    others reuse its parser and instantiate the model, data module and callbacks (one parser build,
    so checking a whole study takes seconds). Returns {variant: '' or the one-line error}.
    """
    from models.run.cli import CifarCLI

    study.check_scale(scale)
    problems: dict[str, str] = {}
    parser = None
    for variant in study.select(only):
        log_dir = run_dir(Path("runs/check"), study, variant, scale, study.seeds[0])
        tee = Tee(io.StringIO())
        try:
            args = build_args(study, variant, scale, study.seeds[0], log_dir, extra)
            with contextlib.redirect_stderr(tee), contextlib.redirect_stdout(io.StringIO()):
                if parser is None:
                    parser = CifarCLI(args).parser
                else:
                    parser.instantiate_classes(parser.parse_args(args))
            problems[variant.name] = ""
        except (Exception, SystemExit) as err:  # noqa: BLE001
            problems[variant.name] = error_line(err, tee.tail)
    return problems
