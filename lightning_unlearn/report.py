"""``python train.py report RUN_DIR [RUN_DIR ...]``: one page that compares stream runs.

Reads run folders written by the stream runner (``lightning_unlearn.stream``) and writes

- ``report.html``: one self-contained file (figures as PNG data URIs, CSS inline, no script,
  nothing fetched), to open in any browser or attach to a message;
- ``report.md`` with the same tables, its figures as ``figures/*.png`` next to it.

Sections: the runs (protocol, method, callbacks, headline numbers); UA / IRA / CRA over
requests; request x concept accuracy; training cost; parameter drift; semantic similarity vs
forgetting; image grids of the same prompts and seeds before and after each request; the
numbers per request. A section whose inputs no run folder has (older runs have no
``run.json``, ``drift.json`` or ``semantic.json``) says so in one line instead.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_unlearn import report_figures as figs
from lightning_unlearn.atomic_io import write_bytes, write_text
from lightning_unlearn.checks import ArgumentParser
from lightning_unlearn.errors import UnlearnError

GRID_MAX_SIDE = 512
"""Longest side of an image grid in the report (the tiny world's 2x grids come back to 32 px tiles)."""
FULL_SIZE_GRIDS = 14
"""Up to this many grids in one report keep GRID_MAX_SIDE; more are downscaled to the same total area."""
MAX_GRIDS = 4 * FULL_SIZE_GRIDS
"""Beyond this many grids in one report (a large study), each run shows the base, the last request
and evenly spaced ones between (at half size, this many cost what FULL_SIZE_GRIDS full ones do)."""
MAX_LAYER_BARS = 64
"""The layer-drift chart keeps the layers that drifted most from the base, at most this many."""


class RunFolderError(UnlearnError, ValueError):
    """A path given to the report is not a readable stream run folder."""


# -- reading run folders ------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path} is not valid JSON: {exc}") from exc


@dataclass
class RequestRecord:
    """What one request (0 = the base model) left in its folder; ``None`` where a file is absent."""

    index: int
    concept: str
    kind: str
    folder: Path | None
    metrics: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    semantic: dict[str, Any] | None = None
    grid: Path | None = None


@dataclass
class RunRecord:
    """One run folder: its results table, its ``run.json`` (if any) and its request folders."""

    path: Path
    name: str
    results: list[dict[str, Any]]
    info: dict[str, Any] | None
    requests: list[RequestRecord] = field(default_factory=list)

    @property
    def protocol(self) -> str | None:
        return (self.info or {}).get("protocol")

    def erased_after(self, index: int) -> list[tuple[str, str]]:
        """(concept, kind) pairs the model evaluated after request ``index`` is meant to have forgotten.

        Sequential and simultaneous runs (and merged independent ones) have erased requests
        1..index; an independent run without merging erases request ``index`` alone.
        """
        served = [(r.concept, r.kind) for r in self.requests if 1 <= r.index <= index]
        if self.protocol == "independent" and not (self.info or {}).get("merge"):
            return served[-1:]
        return served

    def vocabulary(self) -> tuple[list[str], list[str]]:
        """Styles and objects in evaluation order (the grid's rows and columns), from metrics.json."""
        styles: list[str] = []
        objects: list[str] = []
        for request in self.requests:
            if request.metrics:
                styles += [s for s in request.metrics.get("per_style", {}) if s not in styles]
                objects += [o for o in request.metrics.get("per_object", {}) if o not in objects]
        return styles, objects


def load_run(path: str | Path) -> RunRecord:
    """Read a run folder; :class:`RunFolderError` naming what is missing or malformed."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"run folder {path} does not exist")
    results_path = path / "results.json"
    if not results_path.is_file():
        raise RunFolderError(f"{path} is not a stream run folder: it has no results.json (run `train.py unlearn` first)")
    results = _read_json(results_path)
    if not isinstance(results, list) or not all(isinstance(r, dict) and "request" in r and "concept" in r for r in results):
        raise RunFolderError(f"{results_path} should be a list of rows, each with 'request' and 'concept'")
    if not results:
        raise RunFolderError(f"{results_path} has no rows: the run has not evaluated its base model yet")
    info = None
    if (path / "run.json").is_file():
        info = _read_json(path / "run.json")
        if not isinstance(info, dict):
            raise RunFolderError(f"{path / 'run.json'} should be a JSON object")
    name = str((info or {}).get("label") or path.resolve().name)
    run = RunRecord(path=path, name=name, results=results, info=info)
    folders = {}
    if (path / "requests").is_dir():
        for folder in sorted((path / "requests").iterdir()):
            match = re.match(r"^(\d+)-", folder.name)
            if folder.is_dir() and match:
                folders[int(match.group(1))] = folder
    for row in results:
        index = int(row["request"])
        folder = folders.get(index)
        record = RequestRecord(index=index, concept=str(row["concept"]), kind=str(row.get("kind") or ""), folder=folder)
        if folder is not None:
            for attr in ("metrics", "drift", "semantic"):
                if (folder / f"{attr}.json").is_file():
                    setattr(record, attr, _read_json(folder / f"{attr}.json"))
            record.grid = folder / "grid.png" if (folder / "grid.png").is_file() else None
        run.requests.append(record)
    return run


# -- the document model: sections of paragraphs, notes, tables and figures -----------------------

@dataclass
class Note:
    """One line saying why something is not shown."""

    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    """A PNG: embedded in the HTML, written as ``figures/<filename>`` for the Markdown."""

    filename: str
    png: bytes
    caption: str


@dataclass
class Gallery:
    """Image grids of one run: the first (the base model) beside each of the others."""

    caption: str
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Section:
    title: str
    blocks: list[Note | Paragraph | Table | Figure | Gallery] = field(default_factory=list)


def fmt(value: Any, digits: int = 1) -> str:
    """Table cell text: floats with ``digits`` decimals, NaN / missing as "-"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_norm(value: Any) -> str:
    """Drift norms and correlations: 4 significant digits."""
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return f"{value:.4g}"
    return "-"


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-") or "run"


# -- sections ------------------------------------------------------------------------------------

RESULT_HEADERS = (
    ("request", "request", 0), ("concept", "concept", 0), ("kind", "kind", 0), ("UA", "UA", 1),
    ("UA_latest", "UA latest", 1), ("IRA", "IRA", 1), ("CRA", "CRA", 1), ("style_acc", "style acc", 1),
    ("object_acc", "object acc", 1), ("train_steps", "steps", 0), ("cumulative_steps", "cumulative steps", 0),
    ("train_seconds", "train s", 1), ("eval_seconds", "eval s", 1),
)
"""(results.json key, column header, decimals) of the per-request tables."""


def callback_name(entry: Any) -> str:
    """A callback as run.json lists it, without settings that only repeat its class name."""
    text = str(entry)
    match = re.fullmatch(r"(\w+)\{'name': '(\w+)'\}", text)
    return match.group(1) if match and match.group(1) == match.group(2) else text


def runs_section(runs: list[RunRecord]) -> Section:
    section = Section("Runs")
    rows = []
    for run in runs:
        info = run.info or {}
        last = run.results[-1]
        merge = info.get("merge")
        seconds = sum(_float(r.get("train_seconds")) + _float(r.get("eval_seconds")) for r in run.results)
        rows.append([
            run.name, str(run.path), info.get("protocol", "-"),
            (merge.get("method", "-") if isinstance(merge, dict) else fmt(merge)) if "merge" in info else "-",
            info.get("method", "-") + (f" ({info['trainable']})" if info.get("trainable") else ""),
            ", ".join(callback_name(c) for c in info.get("callbacks") or []) or ("none" if "callbacks" in info else "-"),
            info.get("domain") or ", ".join(sorted({r.kind for r in run.requests if r.kind})) or "-",
            str(len(run.results) - 1), fmt(_float(last.get("UA"))), fmt(_float(last.get("IRA"))),
            fmt(_float(last.get("CRA"))), fmt(last.get("cumulative_steps")),
            "-" if math.isnan(seconds) else f"{seconds / 60:.1f}",
        ])
    section.blocks.append(Table(
        "Runs and their headline numbers (after the last request)",
        ["run", "folder", "protocol", "merge", "method", "callbacks", "domain", "requests", "final UA",
         "final IRA", "final CRA", "cumulative steps", "total minutes"],
        rows,
    ))
    for run in runs:
        if run.info is None:
            section.blocks.append(Note(f"{run.name}: no run.json, so protocol, method and callbacks are not recorded (an older run folder)."))
    return section


def curves_section(runs: list[RunRecord]) -> Section:
    section = Section("Unlearning and retention over requests")
    panels = {
        metric: [figs.Series(run.name, [int(r["request"]) for r in run.results], [_float(r.get(metric)) for r in run.results])
                 for run in runs]
        for metric in ("UA", "IRA", "CRA")
    }
    section.blocks.append(Paragraph(
        "UA: forgetting of every concept erased so far (higher is better). IRA: accuracy on the retained "
        "concepts of the erased kind. CRA: the other kind's accuracy on those images."
    ))
    section.blocks.append(Figure("curves.png", figs.metric_curves(panels), "UA, IRA and CRA after each request (request 0 = base)"))
    return section


def heatmap_section(runs: list[RunRecord], slugs: dict[str, str]) -> Section:
    section = Section("Accuracy per concept")
    for run in runs:
        measured = [r for r in run.requests if r.metrics and ("per_style" in r.metrics or "per_object" in r.metrics)]
        if not measured:
            section.blocks.append(Note(f"{run.name}: no metrics.json with per-concept accuracies."))
            continue
        styles, objects = run.vocabulary()
        columns = [(s, "style") for s in styles] + [(o, "object") for o in objects]
        values = np.full((len(measured), len(columns)), np.nan)
        erased = np.zeros(values.shape, dtype=bool)
        for i, request in enumerate(measured):
            gone = set(run.erased_after(request.index))
            for j, (concept, kind) in enumerate(columns):
                values[i, j] = _float(request.metrics.get(f"per_{kind}", {}).get(concept))
                erased[i, j] = (concept, kind) in gone
        labels = [f"{r.index} {r.concept}" for r in measured]
        section.blocks.append(Figure(
            f"{slugs[run.name]}-heatmap.png",
            figs.accuracy_heatmap(labels, columns, values, erased, run.name),
            f"{run.name}: classifier accuracy per style and per object after each request",
        ))
    return section


def cost_section(runs: list[RunRecord]) -> Section:
    section = Section("Training cost")
    cumulative = [figs.Series(run.name, [int(r["request"]) for r in run.results],
                              [_float(r.get("cumulative_steps")) for r in run.results]) for run in runs]
    per_request = [figs.Series(run.name, [int(r["request"]) for r in run.results[1:]],
                               [_float(r.get("train_steps")) for r in run.results[1:]]) for run in runs]
    section.blocks.append(Figure("cost.png", figs.cost_curves(cumulative, per_request),
                                 "Optimizer steps: cumulative over the stream, and per request"))
    return section


def _kv_layers(layers: dict[str, float]) -> dict[str, float]:
    kv = {k: v for k, v in layers.items() if re.search(r"to_[kv]\b|to_[kv]\.", k)}
    return kv or layers


def drift_section(runs: list[RunRecord], slugs: dict[str, str]) -> Section:
    section = Section("Parameter drift")
    with_drift = [run for run in runs if any(r.drift for r in run.requests)]
    if not with_drift:
        section.blocks.append(Note("No run has drift.json (add callbacks.drift.DriftRecorder to the stream's callbacks)."))
        return section
    to_base, to_previous, rows = [], [], []
    for run in with_drift:
        records = [r for r in run.requests if r.drift]
        to_base.append(figs.Series(run.name, [r.index for r in records],
                                   [_float(r.drift.get("to_base", {}).get("total")) for r in records]))
        to_previous.append(figs.Series(run.name, [r.index for r in records],
                                       [_float(r.drift.get("to_previous", {}).get("total")) for r in records]))
        rows += [[run.name, str(r.index), r.concept, fmt_norm(r.drift.get("to_base", {}).get("total")),
                  fmt_norm(r.drift.get("to_previous", {}).get("total"))] for r in records]
    section.blocks.append(Figure("drift.png", figs.drift_curves(to_base, to_previous),
                                 "L2 norm of the trainable weights' change after each request"))
    for run in with_drift:
        last = [r for r in run.requests if r.drift][-1]
        base_layers = _kv_layers(last.drift.get("to_base", {}).get("layers", {}))
        prev_layers = last.drift.get("to_previous", {}).get("layers", {})
        if not base_layers:
            section.blocks.append(Note(f"{run.name}: drift.json of request {last.index} has no per-layer norms."))
            continue
        keep = sorted(base_layers, key=lambda k: -_float(base_layers[k]))[:MAX_LAYER_BARS]
        layers = {k: (_float(base_layers[k]), _float(prev_layers.get(k))) for k in base_layers if k in keep}
        section.blocks.append(Figure(
            f"{slugs[run.name]}-layer-drift.png",
            figs.layer_drift(layers, f"{run.name}: per-layer drift after request {last.index} ({last.concept})"),
            f"{run.name}: per-layer (cross-attention K / V) drift after the last request",
        ))
    for run in runs:
        if run not in with_drift:
            section.blocks.append(Note(f"{run.name}: no drift.json."))
    section.blocks.append(Table("Drift per request", ["run", "request", "concept", "||theta - base||", "||theta - previous||"], rows))
    return section


def semantic_section(runs: list[RunRecord], slugs: dict[str, str]) -> Section:
    section = Section("Semantic similarity and forgetting")
    with_semantic = [run for run in runs if any(r.semantic for r in run.requests)]
    if not with_semantic:
        section.blocks.append(Note("No run has semantic.json (the semantic analysis was not run)."))
        return section
    section.blocks.append(Paragraph(
        "For every retained concept after each request: the cosine similarity of its text embedding to the "
        "request's target, its accuracy drop, and the relative change of the cross-attention K and V outputs for "
        "its prompt. Correlations are over the retained concepts of the target's kind; pooled: over all requests "
        "of a run. K/V: the mean of the K and V changes."
    ))
    rows = []
    for run in with_semantic:
        points: dict[str, list] = {k: [] for k in ("similarity", "drop", "k_change", "v_change", "request", "in_domain")}
        kinds = set()
        for request in run.requests:
            if not request.semantic:
                continue
            kind = str(request.semantic.get("kind") or request.kind)
            kinds.add(kind)
            concepts = request.semantic.get("concepts") or []
            for concept in concepts:
                for key in ("similarity", "drop", "k_change", "v_change"):
                    points[key].append(_float(concept.get(key)))
                points["request"].append(request.index)
                points["in_domain"].append(concept.get("kind") == kind)
            rows.append([run.name, str(request.index), str(request.semantic.get("target", request.concept)),
                         str(sum(c.get("kind") == kind for c in concepts)),
                         fmt_norm(request.semantic.get("pearson_similarity_drop")),
                         fmt_norm(request.semantic.get("pearson_similarity_kv"))])
        mask = np.asarray(points["in_domain"], dtype=bool)
        sim = np.asarray(points["similarity"], dtype=float)[mask]
        pooled_drop = figs.pearson(sim, np.asarray(points["drop"], dtype=float)[mask])
        kv = (np.asarray(points["k_change"], dtype=float) + np.asarray(points["v_change"], dtype=float))[mask] / 2
        rows.append([run.name, "pooled", "all", str(int(mask.sum())), fmt_norm(pooled_drop), fmt_norm(figs.pearson(sim, kv))])
        domain = " / ".join(f"retained {k}s" for k in sorted(kinds))
        section.blocks.append(Figure(
            f"{slugs[run.name]}-semantic.png",
            figs.semantic_scatter(points["similarity"], points["drop"], points["k_change"], points["v_change"],
                                  points["request"], points["in_domain"], domain, run.name),
            f"{run.name}: accuracy drop and K/V change vs similarity to the target, pooled over requests "
            f"(Pearson r = {fmt_norm(pooled_drop)})",
        ))
    for run in runs:
        if run not in with_semantic:
            section.blocks.append(Note(f"{run.name}: no semantic.json."))
    section.blocks.append(Table(
        "Pearson correlations per request, over the retained concepts of the target's kind",
        ["run", "request", "target", "concepts", "r(similarity, drop)", "r(similarity, K/V change)"], rows,
    ))
    return section


def grid_max_side(count: int) -> int:
    """Longest side per grid so that ``count`` grids cost about as much as ``FULL_SIZE_GRIDS`` full
    ones, but never under half of GRID_MAX_SIDE (smaller tiles stop showing what was sampled)."""
    if count <= FULL_SIZE_GRIDS:
        return GRID_MAX_SIDE
    return max(GRID_MAX_SIDE // 2, int(GRID_MAX_SIDE * math.sqrt(FULL_SIZE_GRIDS / count)))


def thin_out(requests: list[RequestRecord], keep: int) -> list[RequestRecord]:
    """At most ``keep`` of ``requests``, always the first (the base) and the last, evenly spaced."""
    if len(requests) <= keep:
        return requests
    positions = np.linspace(0, len(requests) - 1, keep).round().astype(int)
    return [requests[i] for i in sorted(set(positions.tolist()))]


def _load_grid(path: Path, max_side: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return figs.shrink(np.asarray(image.convert("RGB")), max_side)


def grids_section(runs: list[RunRecord], slugs: dict[str, str]) -> Section:
    section = Section("Image grids")
    section.blocks.append(Paragraph(
        "The same prompts and seeds (rows: styles, columns: objects; first seed) from the base model and after "
        "each request; concepts erased at that point are outlined and labelled in red."
    ))
    per_run = max(3, MAX_GRIDS // max(1, len(runs)))
    chosen = {run.name: thin_out([r for r in run.requests if r.grid], per_run) for run in runs}
    count = sum(len(c) for c in chosen.values())
    max_side = grid_max_side(count)
    for run in runs:
        with_grid = chosen[run.name]
        if not with_grid:
            section.blocks.append(Note(f"{run.name}: no grid.png."))
            continue
        left_out = [r.index for r in run.requests if r.grid and r not in with_grid]
        if left_out:
            section.blocks.append(Note(f"{run.name}: grids of requests {left_out} left out to keep the page light "
                                       "(they are in the run folder)."))
        styles, objects = run.vocabulary()
        gallery = Gallery(f"{run.name}: base model (left) and after each request (right)")
        for request in with_grid:
            gone = run.erased_after(request.index)
            title = "base model" if request.index == 0 else f"after request {request.index}: {request.concept}"
            gallery.figures.append(Figure(
                f"{slugs[run.name]}-grid-{request.index:02d}.png",
                figs.grid_figure(_load_grid(request.grid, max_side), styles, objects,
                                 {c for c, k in gone if k == "style"}, {c for c, k in gone if k == "object"}, title),
                f"{run.name}: {title}",
            ))
        section.blocks.append(gallery)
        if with_grid[0].index != 0:
            section.blocks.append(Note(f"{run.name}: no base grid (requests/00-base/grid.png)."))
    if max_side < GRID_MAX_SIDE:
        section.blocks.append(Note(f"{count} grids in this report: each downscaled to at most {max_side} px a side to keep the page light."))
    return section


def results_section(runs: list[RunRecord]) -> Section:
    section = Section("Results per request")
    for run in runs:
        rows = [[fmt(row.get(key), digits) for key, _, digits in RESULT_HEADERS] for row in run.results]
        section.blocks.append(Table(f"{run.name} ({run.path})", [h for _, h, _ in RESULT_HEADERS], rows))
    return section


def build_sections(runs: list[RunRecord]) -> list[Section]:
    """Every section of the report, in reading order."""
    slugs: dict[str, str] = {}
    for run in runs:
        base = slug(run.name)
        candidate, n = base, 2
        while candidate in slugs.values():
            candidate, n = f"{base}-{n}", n + 1
        slugs[run.name] = candidate
    return [
        runs_section(runs), curves_section(runs), heatmap_section(runs, slugs), cost_section(runs),
        drift_section(runs, slugs), semantic_section(runs, slugs), grids_section(runs, slugs), results_section(runs),
    ]


# -- rendering ----------------------------------------------------------------------------------

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


def _html_figure(figure: Figure) -> str:
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


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    figures: list[Path]


def write_report(run_dirs: list[str | Path], out_dir: str | Path, title: str | None = None) -> ReportFiles:
    """Read ``run_dirs``, write ``report.html``, ``report.md`` and ``figures/`` into ``out_dir`` (atomically)."""
    if not run_dirs:
        raise RunFolderError("give at least one run folder")
    resolved = [Path(d).resolve() for d in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise RunFolderError(f"a run folder is given twice: {[str(d) for d in run_dirs]}")
    runs = [load_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise RunFolderError(f"the report folder {out_dir} is or is inside the file {folder}: give a folder's path")
            break
    title = title or "lightning-unlearn report: " + ", ".join(run.name for run in runs)
    sections = build_sections(runs)
    figures = []
    for section in sections:
        for block in section.blocks:
            for figure in block.figures if isinstance(block, Gallery) else [block]:
                if isinstance(figure, Figure):
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


def build_parser() -> argparse.ArgumentParser:
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
