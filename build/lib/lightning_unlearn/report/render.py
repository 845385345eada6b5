"""Rendering a report's sections: one self-contained HTML page, or Markdown beside its figures.

Both renderers walk the same :mod:`~lightning_unlearn.report.document` blocks in the same order,
so the page and the Markdown carry the same tables cell for cell.
"""

from __future__ import annotations

import base64
import html

from lightning_unlearn.report.document import Figure, Gallery, Note, Paragraph, Section

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1.5em; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
nav ol { columns: 2; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
caption { text-align: left; font-weight: bold; padding: .3em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f0f0f0; }
td:nth-child(-n+3), th:nth-child(-n+3) { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
p.note { color: #8a5a00; background: #fff8e6; border-left: 4px solid #e0a800; padding: .4em .8em; }
.runs td:nth-child(2) { font-family: monospace; font-size: 0.9em; }
.gallery-title { font-weight: bold; }
.gallery-row { display: flex; gap: 1.5em; align-items: flex-start; }
.gallery-base { position: sticky; top: 0; background: white; flex: 1; }
.gallery-requests { flex: 1; }
"""
"""The page's only style sheet, inline so that the file stands alone."""


def _html_figure(figure: Figure) -> str:
    """``figure`` as a ``<figure>`` with its PNG inline (a data URI), so the page needs no other file."""
    data = base64.b64encode(figure.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(figure.caption)}">'
            f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")


def render_html(title: str, sections: list[Section]) -> str:
    """One self-contained page: inline CSS, figures as PNG data URIs, no script, no external URL."""
    out = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>", "<nav><ol>",
    ]
    out += [f'<li><a href="#section-{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections, 1)]
    out.append("</ol></nav>")
    for i, section in enumerate(sections, 1):
        out.append(f'<section id="section-{i}"><h2>{html.escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Note):
                out.append(f'<p class="note">{html.escape(block.text)}</p>')
            elif isinstance(block, Paragraph):
                out.append(f"<p>{html.escape(block.text)}</p>")
            elif isinstance(block, Figure):
                out.append(_html_figure(block))
            elif isinstance(block, Gallery):
                # The base stays in view (sticky) beside the requests as the page scrolls: no script needed.
                first, rest = block.figures[0], block.figures[1:]
                out.append(f'<div class="gallery"><p class="gallery-title">{html.escape(block.caption)}</p>'
                           f'<div class="gallery-row"><div class="gallery-base">{_html_figure(first)}</div>'
                           f'<div class="gallery-requests">{"".join(_html_figure(f) for f in rest)}</div></div></div>')
            else:
                css = ' class="runs"' if section.title == "Runs" else ""
                out.append(f"<table{css}><caption>{html.escape(block.caption)}</caption><thead><tr>")
                out += [f"<th>{html.escape(h)}</th>" for h in block.headers]
                out.append("</tr></thead><tbody>")
                for row in block.rows:
                    out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
                out.append("</tbody></table>")
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _md_cell(text: str) -> str:
    """``text`` safe inside one pipe-table cell: a "|" would end the cell, a newline the row."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: list[Section], figures_dir: str = "figures") -> str:
    """The same sections as Markdown; figures link to ``figures_dir/<filename>``."""
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Note):
                out += [f"> {block.text}", ""]
            elif isinstance(block, Paragraph):
                out += [block.text, ""]
            elif isinstance(block, (Figure, Gallery)):
                if isinstance(block, Gallery):
                    out += [f"**{_md_cell(block.caption)}**", ""]
                for figure in block.figures if isinstance(block, Gallery) else [block]:
                    out += [f"![{_md_cell(figure.caption)}]({figures_dir}/{figure.filename})", "",
                            f"*{figure.caption}*", ""]
            else:
                out += [f"**{_md_cell(block.caption)}**", ""]
                out.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
                out.append("| " + " | ".join("---" for _ in block.headers) + " |")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                out.append("")
    return "\n".join(out)
