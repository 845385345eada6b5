"""Findings as a document: ``findings.md`` and the findings section of the HTML report.

Both are built from the same :class:`lightning_unlearn.report.document.Section`, so the page and
the Markdown say the same thing.
"""

from __future__ import annotations

from typing import Any

from lightning_unlearn.findings.claims import Finding, TableCell
from lightning_unlearn.findings.paper import DOMAINS, METHODS, PAPER_REQUESTS, PAPER_UA
from lightning_unlearn.findings.rules import MARGIN, RULES
from lightning_unlearn.report.document import Paragraph, Section, Table
from lightning_unlearn.report.render import render_markdown

MARKS = {"above": " ▲", "below": " ▼", "": ""}
"""How a table cell says it differs from sequential beyond the noise."""


def cell_text(cell: TableCell) -> str:
    text = cell.ours.text() + MARKS[cell.versus_sequential]
    if cell.collapsed:
        text += " (collapsed)"
    if cell.paper is not None:
        text += f" · paper {cell.paper:g}"
    return text


def findings_section(findings: list[Finding], tables: dict[str, dict[tuple[str, str], dict[str, TableCell]]],
                     about: dict[str, Any]) -> Section:
    """The findings: a summary table, each finding's checks, then the regularizer table of each
    method (``tables``: method -> :func:`lightning_unlearn.findings.claims.regularizer_table`)."""
    section = Section("Findings: the paper's claims on this study")
    section.blocks.append(Paragraph(
        f"Profile {about.get('profile', '-')}: {about.get('what', '')} Every number is ours after the last evaluated "
        f"request with its 95% interval (Wilson over the images it is read from; with replicates, Student's t over "
        f"them); the paper's are after {PAPER_REQUESTS} requests, read off its plots (about ±3 points). Differences "
        f"carry the MOVER interval of a difference of independent estimates. A difference below {MARGIN:g} points is "
        f"not one we would call a finding."))
    if about.get("unfinished"):
        section.blocks.append(Paragraph("Unfinished runs, not used (re-run the command to finish them): "
                                        + ", ".join(about["unfinished"]) + "."))
    section.blocks.append(Paragraph(f"A finding's verdict over its checks: {RULES['all']}."))
    section.blocks.append(Table("Verdicts", ["finding", "paper", "verdict"],
                                [[f"{f.number}. {f.title}", f.paper, f.verdict] for f in findings]))
    for finding in findings:
        section.blocks.append(Paragraph(f"Finding {finding.number}: {finding.title}. Paper: {finding.statement} "
                                        f"({finding.paper}). Verdict: {finding.verdict}."))
        rules = sorted({c.rule for c in finding.checks})
        rows = [[c.label, c.ours, c.paper, c.verdict, c.note] for c in finding.checks]
        section.blocks.append(Table(f"Finding {finding.number}: checks", ["check", "ours", "paper", "verdict", "note"], rows))
        for rule in rules:
            section.blocks.append(Paragraph(f"Rule ({rule}): {RULES[rule]}."))
    for method, method_table in tables.items():
        for domain in DOMAINS:
            rows = []
            columns: list[str] = []
            for metric in ("UA", "IRA", "CRA"):
                cells = method_table.get((domain, metric))
                if not cells:
                    continue
                columns = list(cells)
                rows.append([metric, *(cell_text(cells[c]) for c in columns)])
            if rows:
                paper = f"; paper's UA {PAPER_UA}" if method == "ca" else "; the paper's table is on Concept Ablation"
                section.blocks.append(Table(
                    f"Regularizer table, {METHODS[method]} {domain} (▲ / ▼: above / below sequential beyond the noise, "
                    f"the difference's 95% interval excludes 0{paper})", ["metric", *columns], rows))
    return section


def findings_markdown(section: Section, title: str) -> str:
    """``findings.md``'s text."""
    return render_markdown(title, [section])

