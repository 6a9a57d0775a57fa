"""`clipnodule text`: write radiology-report-like text for every nodule of a data set table.

Command-line wiring only; the work is in `clipnodule.training.report_text` and
`clipnodule.training.gemini_writer`. No Qt or Slicer imports.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `text` subcommand."""
    parser = subparsers.add_parser(
        "text",
        help="write report-like text (findings and impression) from the semantic features of a data set table",
        description=(
            "Write one report per nodule (<pid>_<nodule_id>.txt) and reports.csv from the semantic feature "
            "columns of a data set CSV. The template writer runs offline; the Gemini writer sends only the "
            "feature values (no identifiers) to Google Gemini and needs GEMINI_API_KEY or GOOGLE_API_KEY."
        ),
    )
    parser.add_argument("--dataset", required=True, type=Path, help="data set CSV (pid, nodule_id, image_path, coordX..Z, malignant, feature columns)")
    parser.add_argument("--output", required=True, type=Path, help="folder that receives the report files and reports.csv")
    parser.add_argument(
        "--writer",
        choices=("template", "gemini"),
        default="template",
        help="report writer: 'template' (offline, deterministic; default) or 'gemini' (Google Gemini API)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the template writer's findings order (default: 0)")
    parser.add_argument(
        "--gemini-model",
        default="gemini-1.5-flash",
        help="Gemini model name for --writer gemini (default: gemini-1.5-flash, the model used by Zhuang et al. 2025; use a model your key can access)",
    )
    parser.add_argument(
        "--gemini-cache",
        type=Path,
        help="folder of cached Gemini responses, reused across runs (default: OUTPUT/gemini_cache)",
    )
    parser.add_argument(
        "--requests-per-minute",
        type=float,
        default=15.0,
        help="maximum Gemini requests started per minute (default: 15)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `clipnodule text`."""
    from ..training.dataset_table import read_dataset_table
    from ..training.report_text import TemplateReportWriter, write_reports

    table = read_dataset_table(args.dataset, require_labels=False, check_images=False)

    if args.writer == "gemini":
        from ..training.gemini_writer import GeminiReportWriter

        cache_dir = args.gemini_cache or args.output / "gemini_cache"
        writer = GeminiReportWriter(model=args.gemini_model, cache_dir=cache_dir, requests_per_minute=args.requests_per_minute)
    else:
        writer = TemplateReportWriter(seed=args.seed)

    reports = write_reports(table, writer, args.output)
    print(f"Wrote {len(reports)} reports ({args.writer} writer) and reports.csv to {args.output}")
    return 0
