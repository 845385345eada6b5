"""Writing a report: read the run folders, build the sections, write HTML, Markdown and figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_unlearn.atomic_io import write_bytes, write_text
from lightning_unlearn.report.document import Section, figures_of, slug
from lightning_unlearn.report.render import render_html, render_markdown
from lightning_unlearn.report.runs import RunFolderError, load_run
from lightning_unlearn.report.sections import build_sections


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    html: Path
    markdown: Path
    figures: list[Path]


def write_report(run_dirs: list[str | Path], out_dir: str | Path, title: str | None = None,
                 sweeps: list[dict[str, Any]] | None = None, leading_sections: list[Section] | None = None
                 ) -> ReportFiles:
    """Read ``run_dirs``, write ``report.html``, ``report.md`` and ``figures/`` into ``out_dir``
    (atomically); ``sweeps``: a study's sweep rows (``lightning_unlearn.sweeps``), shown in a
    "Strength sweeps" section; ``leading_sections`` (the findings of ``train.py findings``) come first."""
    if not run_dirs:
        raise RunFolderError("give at least one run folder")
    resolved = [Path(d).resolve() for d in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise RunFolderError(f"a run folder is given twice: {[str(d) for d in run_dirs]}")
    # Every folder is read before anything is written: a bad one leaves no half-written report.
    runs = [load_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise RunFolderError(f"the report folder {out_dir} is or is inside the file {folder}: give a folder's path")
            break
    title = title or "lightning-unlearn report: " + ", ".join(run.name for run in runs)
    sections = [*(leading_sections or []), *build_sections(runs, sweeps)]
    figures = []
    for figure in figures_of(sections):
        path = out_dir / "figures" / figure.filename
        write_bytes(figure.png, path)
        figures.append(path)
    markdown = out_dir / "report.md"
    write_text(render_markdown(title, sections), markdown)
    page = out_dir / "report.html"
    write_text(render_html(title, sections), page)
    return ReportFiles(page, markdown, figures)


def default_out_dir(run_dirs: list[str]) -> Path:
    """``<run>/report`` for one run; ``reports/<run1>-vs-<run2>...`` for several."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "report"
    name = "-vs-".join(slug(Path(d).resolve().name) for d in run_dirs)
    return Path("reports") / (name if len(name) <= 100 else name[:100].rstrip("-"))
