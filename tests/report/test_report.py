"""``train.py report`` end to end: on a real two-request stream run folder made by the stream runner."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_unlearn.cli import main
from lightning_unlearn.report.document import fmt, fmt_norm
from lightning_unlearn.report.runs import METRIC_NAMES
from lightning_unlearn.report.sections import RESULT_HEADERS

REPO = Path(__file__).resolve().parents[2]


class PageParser(HTMLParser):
    """Collects every tag's attributes, and every table as (caption, header, rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: list[dict] = []
        self.notes: list[str] = []
        self._text: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append({"caption": "", "headers": [], "rows": []})
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th", "caption") or (tag == "p" and dict(attrs).get("class") == "note"):
            self._text = []

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        text = "".join(self._text or [])
        if tag in ("td", "th") and self._row is not None:
            self._row.append(text)
        elif tag == "caption":
            self.tables[-1]["caption"] = text
        elif tag == "p" and self._text is not None:
            self.notes.append(text)
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            (table["rows"] if table["headers"] else table["headers"]).extend([self._row] if table["headers"] else self._row)
            self._row = None
        if tag in ("td", "th", "caption", "p"):
            self._text = None


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """{caption: [header, *rows]} of every pipe table under a **caption** line."""
    tables, lines = {}, text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("**") and i + 2 < len(lines) and lines[i + 2].startswith("| "):
            rows, j = [], i + 2
            while j < len(lines) and lines[j].startswith("| "):
                rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", lines[j])[1:-1]])
                j += 1
            tables[line.strip("*").replace("\\|", "|")] = [rows[0], *rows[2:]]
    return tables


def with_interval(row: dict, key: str) -> str:
    """``94.2 [90.1, 96.8]`` from a results row's value and bounds; the value alone without bounds."""
    value, low, high = row.get(key), row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if value is None or math.isnan(value):
        return "-"
    if low is None or math.isnan(low):
        return f"{value:.1f}"
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"


def expected_results(run: Path) -> list[list[str]]:
    rows = json.loads((run / "results.json").read_text())

    def cell(row: dict, key: str, digits: int) -> str:
        if key == "collapsed":
            return {True: "yes", False: "no", None: "-"}[row.get(key)]
        text = with_interval(row, key) if key in METRIC_NAMES else fmt(row.get(key), digits)
        return text + " (collapsed)" if key in ("UA", "UA_latest") and row.get("collapsed") and text != "-" else text

    return [[cell(row, key, digits) for key, _, digits in RESULT_HEADERS] for row in rows]


def assert_self_contained(page: PageParser, html_text: str) -> list[bytes]:
    """No URL leaves the file, no script; every image a PNG data URI. Returns the PNGs."""
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html_text, re.I)
    assert "<script" not in html_text.lower() and "@import" not in html_text and "url(" not in html_text
    pngs = []
    for tag, attrs in page.tags:
        if tag == "img":
            src = attrs["src"]
            assert src.startswith("data:image/png;base64,"), src[:60]
            png = base64.b64decode(src.split(",", 1)[1], validate=True)
            with Image.open(io.BytesIO(png)) as image:
                assert image.format == "PNG"
                image.verify()
            pngs.append(png)
        if tag == "a":
            assert attrs["href"].startswith("#")
        if tag == "link":
            pytest.fail(f"external resource link {attrs}")
    return pngs


def test_one_run_report_is_self_contained_and_mirrors_results(stream_run, tmp_path, capsys):
    out = tmp_path / "out"
    main(["report", str(stream_run), "--out", str(out), "--title", "two styles"])
    assert "report.html" in capsys.readouterr().out
    html_text = (out / "report.html").read_text(encoding="utf-8")
    page = parse_page(out / "report.html")
    pngs = assert_self_contained(page, html_text)
    # Final bars, curves, heatmap, cost, drift over requests, per-layer drift, semantic scatter, base + 2 grids.
    assert len(pngs) == 10

    # The Markdown names the same figures, written next to it with the same bytes.
    md = (out / "report.md").read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert sorted((out / p).read_bytes() for p in linked) == sorted(pngs)
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(Path(p).name for p in linked)
    assert {"esd-two-styles-grid-00.png", "esd-two-styles-grid-01.png", "esd-two-styles-grid-02.png"} <= {
        Path(p).name for p in linked}

    # The per-request table holds results.json's numbers, in the HTML and in the Markdown.
    expected = expected_results(stream_run)
    [html_table] = [t for t in page.tables if t["caption"].startswith("esd_two_styles (")]
    assert html_table["headers"] == [h for _, h, _ in RESULT_HEADERS]
    assert html_table["rows"] == expected
    md_tables = markdown_tables(md)
    assert md_tables[html_table["caption"]] == [html_table["headers"], *expected]
    # Every table of the page is in the Markdown, cell for cell.
    for table in page.tables:
        assert md_tables[table["caption"]] == [table["headers"], *table["rows"]]

    # Headline numbers: the last request's UA / IRA / CRA and the cumulative steps.
    last = json.loads((stream_run / "results.json").read_text())[-1]
    [runs_table] = [t for t in page.tables if t["caption"].startswith("Runs")]
    row = dict(zip(runs_table["headers"], runs_table["rows"][0]))
    assert (row["UA"], row["IRA"], row["CRA"]) == tuple(with_interval(last, m) for m in ("UA", "IRA", "CRA"))
    assert re.fullmatch(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", row["IRA"])  # e.g. 94.2 [90.1, 96.8]
    assert "Shaded: the 95% interval" in html_text and "whiskers: 95% intervals" in html_text
    assert row["cumulative steps"] == "4" and row["requests done"] == "2 of 2 requests"
    assert row["numbers"] == "final, after request 2" and row["collapsed"] == "no"
    assert (row["protocol"], row["method"]) == ("sequential", "ESD (esd-x)") and row["callbacks"] == "drift recorder"
    assert row["backbone"] == "UNet2DConditionModel (epsilon)"

    # Drift and semantics as the stream runner recorded them.
    drifts = [json.loads((d / "drift.json").read_text()) for d in sorted((stream_run / "requests").glob("0[12]-*"))]
    [drift] = [t for t in page.tables if t["caption"] == "Drift per request"]
    assert [r[3:] for r in drift["rows"]] == [
        [fmt_norm(d["to_base"]["total"]), fmt_norm(d["to_previous"]["total"])] for d in drifts]
    semantics = [json.loads((d / "semantic.json").read_text()) for d in sorted((stream_run / "requests").glob("0[12]-*"))]
    [semantic] = [t for t in page.tables if t["caption"].startswith("Pearson correlations")]
    assert [r[2] for r in semantic["rows"]] == ["Van Gogh", "Cartoon", "all"]
    assert [r[4] for r in semantic["rows"][:2]] == [fmt_norm(s["pearson_similarity_drop"]) for s in semantics]
    assert not list(out.rglob("*.tmp"))


def test_missing_inputs_are_noted_not_fatal(stream_run, copy_run, tmp_path):
    run = copy_run(stream_run, tmp_path / "bare")
    for name in ("run.json", "drift.json", "semantic.json", "grid.png", "metrics.json"):
        for path in run.rglob(name):
            path.unlink()
    main(["report", str(run)])  # default: RUN_DIR/report
    page = parse_page(run / "report" / "report.html")
    notes = "\n".join(page.notes)
    for expected in ("bare: no run.json", "No run has drift.json", "No run has semantic.json",
                     "bare: no grid.png", "bare: no metrics.json"):
        assert expected in notes
    md = (run / "report" / "report.md").read_text(encoding="utf-8")
    assert "> No run has drift.json" in md and "> bare: no grid.png." in md
    # What results.json alone gives is still there: final bars, curves, cost, and the table.
    assert len([t for t, _ in page.tags if t == "img"]) == 3
    assert [t for t in page.tables if t["caption"].startswith("bare (")][0]["rows"] == expected_results(run)


def write_analyses(run: Path, label: str, protocol: str, callbacks: list[str], scale: float) -> dict:
    """run.json, drift.json and semantic.json in the stream runner's formats, with known numbers."""
    from lightning_unlearn.atomic_io import write_json

    write_json({"protocol": protocol, "merge": None, "method": "ESD", "callbacks": callbacks,
                "domain": "style", "label": label}, run / "run.json")
    folders = sorted(p for p in (run / "requests").iterdir() if not p.name.startswith("00-"))
    keys = ["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight",
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_q.weight"]
    drifts, points = [], []
    for n, folder in enumerate(folders, 1):
        layers = {k: scale * n * (i + 1) for i, k in enumerate(keys)}
        drift = {"to_base": {"total": math.sqrt(sum(v * v for v in layers.values())), "layers": layers},
                 "to_previous": {"total": scale * 1.5, "layers": {k: scale for k in keys}}}
        write_json(drift, folder / "drift.json")
        drifts.append(drift)
        concepts = [{"concept": c, "kind": "object" if c == "circle" else "style", "similarity": s, "accuracy_before": 100.0,
                     "accuracy_after": 100.0 - d, "drop": d, "k_change": 0.1 + s, "v_change": 0.2 + s * n}
                    for c, s, d in (("Monet", 0.2 * n, 10.0 * n), ("Pop Art", 0.5, 3.0), ("circle", 0.05, 1.0 + n))]
        points += concepts
        write_json({"target": folder.name, "kind": "style", "pearson_similarity_drop": -0.25 * n,
                    "pearson_similarity_kv": 0.125 * n, "concepts": concepts}, folder / "semantic.json")
    return {"drifts": drifts, "points": points}


def test_two_runs_compare_protocols_with_drift_and_semantics(stream_run, copy_run, tmp_path, monkeypatch):
    a = copy_run(stream_run, tmp_path / "seq")
    b = copy_run(stream_run, tmp_path / "sim")
    known_a = write_analyses(a, "sequential ESD", "sequential", [], 1.0)
    write_analyses(b, "simultaneous ESD + L2", "simultaneous", ["AnchorRegularizer"], 0.5)
    monkeypatch.chdir(tmp_path)
    main(["report", str(a), str(b)])
    out = tmp_path / "reports" / "seq-vs-sim"
    html_text = (out / "report.html").read_text(encoding="utf-8")
    page = parse_page(out / "report.html")
    pngs = assert_self_contained(page, html_text)
    # final bars, curves, 2 heatmaps, cost, drift curves, 2 layer-drift charts, 2 semantic scatters, 2 x 3 grids.
    assert len(pngs) == 1 + 1 + 2 + 1 + 1 + 2 + 2 + 6

    runs = [dict(zip(t["headers"], r)) for t in page.tables if t["caption"].startswith("Runs") for r in t["rows"]]
    assert [(r["run"], r["protocol"], r["method"], r["callbacks"]) for r in runs] == [
        ("sequential ESD", "sequential", "ESD", "none"), ("simultaneous ESD + L2", "simultaneous", "ESD", "AnchorRegularizer")]
    assert "no run.json" not in "\n".join(page.notes)

    [drift] = [t for t in page.tables if t["caption"] == "Drift per request"]
    seq_rows = [r for r in drift["rows"] if r[0] == "sequential ESD"]
    assert [r[3] for r in seq_rows] == [fmt_norm(d["to_base"]["total"]) for d in known_a["drifts"]]
    assert [r[4] for r in seq_rows] == ["1.5", "1.5"]

    [semantic] = [t for t in page.tables if t["caption"].startswith("Pearson correlations")]
    seq = [r for r in semantic["rows"] if r[0] == "sequential ESD"]
    # Pooled over both requests, over the retained concepts of the target's kind (styles) only.
    styles = [p for p in known_a["points"] if p["kind"] == "style"]
    pooled = float(np.corrcoef([p["similarity"] for p in styles], [p["drop"] for p in styles])[0, 1])
    assert [r[3] for r in seq] == ["2", "2", "4"]
    assert [r[4] for r in seq] == ["-0.25", "-0.5", fmt_norm(pooled)]
    assert f"Pearson r = {seq[-1][4]}" in html_text  # the scatter's caption carries the pooled r
    md = (out / "report.md").read_text(encoding="utf-8")
    assert markdown_tables(md)["Drift per request"] == [drift["headers"], *drift["rows"]]



def test_a_folder_written_before_the_intervals_shows_its_values_without_them(stream_run, copy_run, tmp_path):
    run = copy_run(stream_run, tmp_path / "old")
    rows = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps([{k: v for k, v in r.items() if not k.endswith(("_lo", "_hi"))}
                                                  for r in rows]))
    main(["report", str(run)])
    page = parse_page(run / "report" / "report.html")
    [runs_table] = [t for t in page.tables if t["caption"].startswith("Runs")]
    row = dict(zip(runs_table["headers"], runs_table["rows"][0]))
    assert row["IRA"] == f"{rows[-1]['IRA']:.1f}"  # the value, no brackets
    [table] = [t for t in page.tables if t["caption"].startswith("esd_two_styles (")]
    assert table["rows"] == expected_results(run) and "[" not in "".join(table["rows"][-1])
    assert "No replicates among these runs" in "\n".join(page.notes)


def test_replicates_are_aggregated_per_run_and_request_with_a_t_interval(stream_run, copy_run, tmp_path):
    folders = []
    for seed, shift in ((0, 0.0), (1, -6.0)):
        run = copy_run(stream_run, tmp_path / f"seq@seed{seed}")
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**info, "label": run.name}))
        rows = json.loads((run / "results.json").read_text())
        for row in rows:
            row["IRA"] += shift
        (run / "results.json").write_text(json.dumps(rows))
        folders.append(run)
    single = copy_run(stream_run, tmp_path / "single")
    out = tmp_path / "out"
    main(["report", *map(str, folders), str(single), "--out", str(out)])
    page = parse_page(out / "report.html")
    html_text = (out / "report.html").read_text(encoding="utf-8")
    # final bars, curves, cost, drift; replicate curves and bars; per run: heatmap, layer drift, semantic, 3 grids.
    assert len(assert_self_contained(page, html_text)) == 4 + 2 + 3 * 6
    [table] = [t for t in page.tables if t["caption"].startswith("seq: 2 replicate(s)")]
    last = dict(zip(table["headers"], table["rows"][-1]))
    ira = [json.loads((f / "results.json").read_text())[-1]["IRA"] for f in folders]
    mean, half = sum(ira) / 2, 12.7062 * abs(ira[0] - ira[1]) / 2  # t(1) * s / sqrt(2), s = |a - b| / sqrt(2)
    assert last["IRA"] == f"{mean:.1f} [{mean - half:.1f}, {mean + half:.1f}]"
    assert (last["replicates"], last["interval"]) == ("2", "t over replicates")
    # A run without replicates shows its own interval over the images.
    [alone] = [t for t in page.tables if t["caption"].startswith("esd_two_styles: 1 replicate(s)")]
    assert dict(zip(alone["headers"], alone["rows"][-1]))["interval"] == "within run"
    assert "with 95% t-interval bands" in html_text


def find_chromium() -> str | None:
    """$CHROMIUM, a Chromium on PATH, or the one scripts/check_report_render.sh unpacked."""
    candidates = [os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                  shutil.which("google-chrome")]
    home = Path(os.environ.get("CHROMIUM_HOME", Path.home() / ".cache" / "lightning-unlearn" / "chromium"))
    candidates.append(str(home / "root" / "usr" / "lib" / "chromium" / "chromium"))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(stream_run, tmp_path):
    if find_chromium() is None:
        pytest.skip("no Chromium: set CHROMIUM, install Debian's chromium, or run "
                    "`bash scripts/check_report_render.sh REPORT_HTML` once to unpack it without root")
    main(["report", str(stream_run), "--out", str(tmp_path)])
    shot = tmp_path / "shot.png"
    subprocess.run(["bash", str(REPO / "scripts" / "check_report_render.sh"), str(tmp_path / "report.html"), str(shot),
                    "1200,1600"], check=True, cwd=REPO, timeout=120)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (1600, 1200, 3)
    # The title bar (dark text on white) and the first figure (coloured lines) are on the screen.
    assert (pixels.min(axis=2) < 60).mean() > 0.002
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
