"""``python train.py report RUN_DIR [RUN_DIR ...]``: the report's command line (plain argparse)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_unlearn.checks import ArgumentParser
from lightning_unlearn.report.writer import ReportFiles, default_out_dir, write_report


def build_parser() -> argparse.ArgumentParser:
    """The ``train.py report`` arguments: run folders, ``--out`` and ``--title``."""
    parser = ArgumentParser(
        prog="train.py report",
        description="Compare stream run folders in one self-contained HTML page (figures embedded) "
                    "and the same tables as Markdown with its figures as PNG files.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders written by `train.py unlearn`")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: RUN_DIR/report for one run, reports/<run1>-vs-<run2>... for several)")
    parser.add_argument("--title", default=None, help="page title (default: the runs' names)")
    return parser


def main(argv: list[str]) -> ReportFiles:
    """``train.py report RUN_DIR [RUN_DIR ...] [--out DIR] [--title TITLE]``."""
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else default_out_dir(args.run_dirs)
    # A RunFolderError reaches the command line, which prints it as one "error:" line (exit 2).
    files = write_report(args.run_dirs, out, args.title)
    print(f"wrote {files.html} ({files.html.stat().st_size / 1e6:.1f} MB), {files.markdown} "
          f"and {len(files.figures)} figures in {files.markdown.parent / 'figures'}")
    return files
