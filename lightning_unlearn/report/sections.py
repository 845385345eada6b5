"""The report's sections, built from run records into document blocks (no HTML, no Markdown).

Sections, in reading order: the runs (protocol, method, callbacks, headline numbers with their
95% intervals, as bars with whiskers); replicates (per study run, the mean over its seeds with a
t interval); UA / IRA / CRA over requests (interval bands); robustness to attacks (runs with
``--stream.attacks`` only); request x concept accuracy; training cost; parameter drift; semantic
similarity vs forgetting; image grids of the same prompts and seeds before and after each
request; the numbers per request. A section whose inputs no run folder has (older runs have no
``run.json``, ``drift.json`` or ``semantic.json``) says so in one :class:`Note` instead.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from lightning_unlearn.attacks.trend import stream_trend
from lightning_unlearn.findings.rules import RULES
from lightning_unlearn.replicates import aggregate_rows, group_replicates, parse_replicate_name
from lightning_unlearn.report import figures as figs
from lightning_unlearn.report.document import (
    Figure, Gallery, Note, Paragraph, Section, Table, as_float, fmt, fmt_interval, fmt_norm, slug,
)
from lightning_unlearn.report.runs import (
    ATTACK_COLUMNS, HEADLINE_METRICS, METRIC_NAMES, RequestRecord, RunRecord, metric_interval,
)
from lightning_unlearn.run_folder import COLLAPSE_TOP_SHARE
from lightning_unlearn.sweeps import BEST_RULE, sweep_verdicts

GRID_MAX_SIDE = 512
"""Longest side of an image grid in the report (the tiny world's 2x grids come back to 32 px tiles)."""
FULL_SIZE_GRIDS = 14
"""Up to this many grids in one report keep GRID_MAX_SIDE; more are downscaled to the same total area."""
MAX_GRIDS = 4 * FULL_SIZE_GRIDS
"""Beyond this many grids in one report (a large study), each run shows the base, the last request
and evenly spaced ones between (at half size, this many cost what FULL_SIZE_GRIDS full ones do)."""
MAX_LAYER_BARS = 64
"""The layer-drift chart keeps the layers that drifted most from the base, at most this many."""



RESULT_HEADERS = (
    ("request", "request", 0), ("concept", "concept", 0), ("kind", "kind", 0),
    # Every metric, its header the name with spaces ("UA latest", "style acc"), one decimal.
    *((metric, metric.replace("_", " "), 1) for metric in METRIC_NAMES),
    ("train_steps", "steps", 0), ("cumulative_steps", "cumulative steps", 0),
    ("train_seconds", "train s", 1), ("eval_seconds", "eval s", 1),
    ("style_top_share", "style top share", 2), ("object_top_share", "object top share", 2),
    ("collapsed", "collapsed", 0),
)
"""(results.json key, column header, decimals) of the per-request tables."""
UA_KEYS = ("UA", "UA_latest")
"""The columns a collapsed checkpoint marks as not meaningful."""
COLLAPSED_MARK = " (collapsed)"
INTERVAL_NOTE = "95% intervals in brackets (docs/statistics.md); none where a run folder predates them."



def interval_series(label: str, rows: list[dict[str, Any]], metric: str) -> figs.Series:
    """``metric`` over the requests of results ``rows`` with its interval's bounds."""
    bounds = [metric_interval(r, metric) for r in rows]
    return figs.Series(label, [int(r["request"]) for r in rows], [as_float(r.get(metric)) for r in rows],
                       [b[0] for b in bounds], [b[1] for b in bounds])


def final_bars(named_rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, figs.Bar]]:
    """``{name: {metric: Bar}}`` of each name's last results row (the headline metrics)."""
    return {name: {m: figs.Bar(as_float(row.get(m)), *metric_interval(row, m)) for m in HEADLINE_METRICS}
            for name, row in named_rows.items()}


def collapsed(row: dict[str, Any]) -> bool | None:
    """Whether the results row's checkpoint collapsed (a head UA is read with puts most retained
    images in one class); ``None`` when not measured (not evaluated, or an older run folder)."""
    value = row.get("collapsed")
    return None if value is None else bool(value)


def metric_cell(row: dict[str, Any], key: str, digits: int = 1) -> str:
    """A results cell; UA at a collapsed checkpoint is marked as not meaningful."""
    if key == "collapsed":
        return collapse_cell(row)
    if key in METRIC_NAMES:
        text = fmt_interval(row.get(key), metric_interval(row, key), digits)
    else:
        text = fmt(row.get(key), digits)
    return text + COLLAPSED_MARK if key in UA_KEYS and collapsed(row) and text != "-" else text


def collapse_cell(row: dict[str, Any]) -> str:
    """``yes`` / ``no`` / ``-`` (not measured)."""
    flag = collapsed(row)
    return "-" if flag is None else ("yes" if flag else "no")


def last_evaluated(run: RunRecord) -> dict[str, Any]:
    """The run's last results row with numbers (``--stream.evaluate_every`` leaves NaN rows)."""
    evaluated = [r for r in run.results if not math.isnan(as_float(r.get("IRA")))]
    return evaluated[-1] if evaluated else run.results[-1]


def runs_section(runs: list[RunRecord]) -> Section:
    """One row per run: where it is, how it was run (protocol, method, backbone, callbacks), how
    far it got and its headline metrics after the last evaluated request (final only for a
    finished run)."""
    section = Section("Runs")
    rows = []
    for run in runs:
        info = run.info or {}
        last = last_evaluated(run)
        seconds = sum(as_float(r.get("train_seconds")) + as_float(r.get("eval_seconds")) for r in run.results)
        labels = run.callback_labels
        rows.append([
            run.title, str(run.path), run.protocol_label or "-",
            info.get("method", "-") + (f" ({info['trainable']})" if info.get("trainable") else ""),
            # Denoiser class and objective, so a study over backbones compares them side by side.
            info.get("backbone") or "-",
            "-" if labels is None else (", ".join(labels) or "none"),
            info.get("domain") or ", ".join(sorted({r.kind for r in run.requests if r.kind})) or "-",
            run.progress, ("final, " if run.finished and last is run.results[-1] else "") + f"after request {last['request']}",
            *(metric_cell(last, metric) for metric in HEADLINE_METRICS), collapse_cell(last),
            fmt(last.get("cumulative_steps")),
            "-" if math.isnan(seconds) else f"{seconds / 60:.1f}",
        ])
    finished = [run for run in runs if run.finished]
    caption = "Runs and their numbers after the last evaluated request"
    if finished and len(finished) < len(runs):
        caption += " (finished and unfinished runs mixed: compare with care)"
    section.blocks.append(Table(
        caption,
        ["run", "folder", "protocol", "method", "backbone", "callbacks", "domain", "requests done", "numbers",
         *HEADLINE_METRICS, "collapsed", "cumulative steps", "total minutes"],
        rows,
    ))
    if finished and len(finished) < len(runs):
        section.blocks.append(Paragraph(
            "This table mixes finished and unfinished runs. An unfinished run's numbers are after fewer requests "
            "than it plans: they are not its final numbers, and not comparable with a finished run's."
        ))
    for run in runs:
        if not run.finished:
            section.blocks.append(Note(
                f"{run.name} is unfinished ({run.progress.split(',')[0]} done): its numbers everywhere in this report are after request "
                f"{last_evaluated(run)['request']}, not final. Re-run its command to finish it."))
    if any(collapsed(r) for run in runs for r in run.results):
        section.blocks.append(Paragraph(
            f"collapsed: at that checkpoint a classifier head that UA is read with puts over {COLLAPSE_TOP_SHARE:.0%} of "
            "the retained prompts' images in one class (and over twice the share a correct model would give it): the "
            "model draws the same thing for most prompts, so a high UA there does not mean the erased concepts were "
            f"forgotten selectively. UA at such a checkpoint is marked{COLLAPSED_MARK} and is not meaningful."
        ))
    section.blocks.append(Paragraph(INTERVAL_NOTE))
    section.blocks.append(Figure(
        "final.png", figs.metric_bars(final_bars({run.title: last_evaluated(run) for run in runs})),
        "UA, IRA and CRA after the last evaluated request; whiskers: 95% intervals",
    ))
    for run in runs:
        if run.info is None:
            section.blocks.append(Note(f"{run.title}: no run.json, so protocol, method and callbacks are not recorded (an older run folder)."))
    return section


def curves_section(runs: list[RunRecord]) -> Section:
    """The headline metrics over requests, every run overlaid in one panel per metric."""
    section = Section("Unlearning and retention over requests")
    panels = {metric: [interval_series(run.title, run.results, metric) for run in runs] for metric in HEADLINE_METRICS}
    section.blocks.append(Paragraph(
        "UA: forgetting of every concept erased so far (higher is better). IRA: accuracy on the retained "
        "concepts of the erased kind. CRA: the other kind's accuracy on those images. Shaded: the 95% interval "
        "over the images each number is read from."
    ))
    section.blocks.append(Figure("curves.png", figs.metric_curves(panels),
                                 "UA, IRA and CRA after each request (request 0 = base), with 95% interval bands"))
    for run in runs:
        flagged = [r for r in run.results if collapsed(r)]
        if flagged:
            shares = ", ".join(f"{r['request']} ({max(as_float(r.get('style_top_share')), as_float(r.get('object_top_share'))):.0%})"
                               for r in flagged)
            section.blocks.append(Note(
                f"{run.title}: collapsed at requests {shares} (share of retained images in one predicted class): "
                "UA there is not meaningful."))
    return section


def replicates_section(runs: list[RunRecord]) -> Section:
    """Per study run with replicates (run folders ``<run>@seed<S>``): the mean over its seeds with
    a t interval after each request, as curves with bands, bars with whiskers and a table."""
    section = Section("Replicates")
    groups = group_replicates([run.name for run in runs])
    if not any(parse_replicate_name(name) for names in groups.values() for name in names):
        section.blocks.append(Note("No replicates among these runs (a study's `replicates:` makes them: "
                                   "run folders named <run>@seed<S>)."))
        return section
    by_name = {run.name: run for run in runs}
    aggregated = {group: aggregate_rows(group, [by_name[name].results for name in names]) for group, names in groups.items()}
    section.blocks.append(Paragraph(
        "Runs repeated with other seeds (model, data, evaluation noise and, with shuffle_order, the request "
        "order): per request, the mean over the replicates and Student's t 95% interval across them. A run with "
        "one replicate shows its own interval over the images."
    ))
    panels = {metric: [interval_series(group, rows, metric) for group, rows in aggregated.items()] for metric in HEADLINE_METRICS}
    section.blocks.append(Figure("replicate-curves.png", figs.metric_curves(panels),
                                 "Mean UA, IRA and CRA over replicates after each request, with 95% t-interval bands"))
    section.blocks.append(Figure("replicate-final.png", figs.metric_bars(final_bars({g: r[-1] for g, r in aggregated.items()})),
                                 "Mean UA, IRA and CRA over replicates after the last request; whiskers: 95% t intervals"))
    for group, rows in aggregated.items():
        section.blocks.append(Table(
            f"{group}: {len(groups[group])} replicate(s) ({', '.join(groups[group])})",
            ["request", "concept", "replicates", "interval", *HEADLINE_METRICS],
            [[str(r["request"]), str(r["concept"]), str(r["replicates"]), str(r["interval"]),
              *(fmt_interval(r.get(m), metric_interval(r, m)) for m in HEADLINE_METRICS)] for r in rows],
        ))
    return section


def sweeps_section(rows: list[dict[str, Any]]) -> Section:
    """A study's strength sweeps (``root/sweeps.json`` rows, :mod:`lightning_unlearn.sweeps`):
    per swept run, one line per setting with the last request's UA, IRA and CRA and their 95%
    intervals, the setting the rule picks marked, and the verdict in words."""
    section = Section("Strength sweeps")
    section.blocks.append(Paragraph(
        f"Each swept run's settings after the last request (mean over replicates where there are several). "
        f"Best: {BEST_RULE}; a qualifying setting whose IRA interval overlaps the best one's cannot be told "
        "apart from it. " + INTERVAL_NOTE
    ))
    verdicts = sweep_verdicts(rows)
    for sweep, verdict in verdicts.items():
        group = [r for r in rows if r["sweep"] == sweep]
        section.blocks.append(Table(
            f"{sweep}: {verdict}", ["setting", "run", "replicates", *HEADLINE_METRICS, "best"],
            [[str(r["setting"]), str(r["run"]), str(r["replicates"]),
              *(fmt_interval(r.get(m), metric_interval(r, m)) for m in HEADLINE_METRICS), "best" if r["best"] else ""]
             for r in group],
        ))
    return section


ATTACKS = tuple(column[: -len("_asr")] for column in ATTACK_COLUMNS if column.endswith("_asr"))
"""Attacks whose ASR columns a results row may hold (``--stream.attacks``), in column order."""


def attacked(run: RunRecord) -> bool:
    """Whether any results row of ``run`` carries attack columns."""
    return any(f"{name}_asr" in row for row in run.results for name in ATTACKS)


def attacks_section(runs: list[RunRecord]) -> Section:
    """Robustness vs request: each attack's ASR on the request's concept after every request,
    runs overlaid, and per run a table of ASR with 95% intervals and relearning's steps to recover."""
    section = Section("Robustness to adversarial recovery")
    runs = [run for run in runs if attacked(run)]
    names = [name for name in ATTACKS if any(f"{name}_asr" in row for run in runs for row in run.results)]
    section.blocks.append(Paragraph(
        "After each request the erased concept is attacked on a copy of the committed model: relearning "
        "(fine-tuning on a few base-model images of it), a learned soft prompt, a searched word prefix. "
        "ASR: share of the attacked images the classifier calls the erased concept (lower is more robust); "
        "brackets: 95% Wilson interval; steps to recover: relearning steps until UA < 50 ('-': not within the budgets)."
    ))
    panels = {
        f"{name} ASR": [figs.Series(run.name, [int(r["request"]) for r in run.results],
                                    [as_float(r.get(f"{name}_asr")) for r in run.results]) for run in runs]
        for name in names
    }
    section.blocks.append(Figure("attacks.png", figs.metric_curves(panels), "Attack success rate after each request"))
    for run in runs:
        rows = []
        for row in run.results:
            if not any(f"{name}_asr" in row for name in names):
                continue
            cells = [fmt(row.get("request")), str(row.get("concept"))]
            for name in names:
                asr, low, high = (as_float(row.get(f"{name}_asr{end}")) for end in ("", "_low", "_high"))
                cells.append("-" if math.isnan(asr) else f"{asr:.1f} [{low:.1f}, {high:.1f}]")
            steps = row.get("relearn_steps_to_recover")
            cells += ["-" if steps is None else fmt(steps), fmt(row.get("attack_images")), fmt(as_float(row.get("attack_seconds")), 1)]
            rows.append(cells)
        section.blocks.append(Table(
            f"{run.name}: attacks on each request's concept",
            ["request", "concept", *(f"{name} ASR %" for name in names), "relearn steps to recover", "images", "attack s"],
            rows,
        ))
    trends = [(run, stream_trend(run.path)) for run in runs]
    trends = [(run, trend) for run, trend in trends if trend is not None]
    if trends:
        section.blocks.append(Paragraph(
            "Earlier erasures across the stream (runs with --stream.attacks.targets=all_erased): every concept "
            "erased before the last request, attacked right after its own request and again after the last one, "
            "with the same attacker images and evaluation noise; ASR pooled over those concepts' images. 'no "
            "attack': before any attack (relearning's step 0); relearn@N: after N relearning steps. Change: last "
            "minus own, MOVER interval of independent proportions (wider than a paired interval). Verdict on 'less "
            f"robust as requests accumulate': {RULES['difference']}; the last column says whether the interval lies "
            "above 0 (less robust), below 0 (more robust) or inside +-10 points (no change of 10 or more)."
        ))
    for run, trend in trends:
        section.blocks.append(Table(
            f"{run.name}: earlier erasures after their own request vs after request {trend.last_request}",
            ["attack", "concepts", "ASR % own request", f"ASR % after request {trend.last_request}", "change",
             "less robust?", "the interval says"],
            [[t.attack, str(len(t.concepts)), t.own.estimate().text(), t.last.estimate().text(), t.change.text(), t.verdict,
              t.direction]
             for t in trend.trends],
        ))
    return section


def heatmap_section(runs: list[RunRecord], slugs: dict[str, str]) -> Section:
    """Per run, request x concept accuracy from metrics.json, erased cells marked."""
    section = Section("Accuracy per concept")
    for run in runs:
        measured = [r for r in run.requests if r.metrics and ("per_style" in r.metrics or "per_object" in r.metrics)]
        if not measured:
            section.blocks.append(Note(f"{run.title}: no metrics.json with per-concept accuracies."))
            continue
        styles, objects = run.vocabulary()
        columns = [(s, "style") for s in styles] + [(o, "object") for o in objects]
        values = np.full((len(measured), len(columns)), np.nan)
        erased = np.zeros(values.shape, dtype=bool)
        for i, request in enumerate(measured):
            gone = set(run.erased_after(request.index))
            for j, (concept, kind) in enumerate(columns):
                values[i, j] = as_float(request.metrics.get(f"per_{kind}", {}).get(concept))
                erased[i, j] = (concept, kind) in gone
        labels = [f"{r.index} {r.concept}" for r in measured]
        section.blocks.append(Figure(
            f"{slugs[run.name]}-heatmap.png",
            figs.accuracy_heatmap(labels, columns, values, erased, run.title),
            f"{run.title}: classifier accuracy per style and per object after each request",
        ))
    return section


def cost_section(runs: list[RunRecord]) -> Section:
    """Optimizer steps, cumulative and per request (the base, request 0, trains none)."""
    section = Section("Training cost")
    cumulative = [figs.Series(run.title, [int(r["request"]) for r in run.results],
                              [as_float(r.get("cumulative_steps")) for r in run.results]) for run in runs]
    per_request = [figs.Series(run.title, [int(r["request"]) for r in run.results[1:]],
                               [as_float(r.get("train_steps")) for r in run.results[1:]]) for run in runs]
    section.blocks.append(Figure("cost.png", figs.cost_curves(cumulative, per_request),
                                 "Optimizer steps: cumulative over the stream, and per request"))
    return section


def _kv_layers(layers: dict[str, float]) -> dict[str, float]:
    """The cross-attention K / V matrices among ``layers`` (where erasure acts); all of them if none is."""
    kv = {k: v for k, v in layers.items() if re.search(r"to_[kv]\b|to_[kv]\.", k)}
    return kv or layers


def drift_section(runs: list[RunRecord], slugs: dict[str, str]) -> Section:
    """Weight drift from the base and from the previous request, and per layer after the last request."""
    section = Section("Parameter drift")
    with_drift = [run for run in runs if any(r.drift for r in run.requests)]
    if not with_drift:
        section.blocks.append(Note("No run has drift.json (add lightning_unlearn.callbacks.drift.DriftRecorder to the stream's callbacks)."))
        return section
    to_base, to_previous, rows = [], [], []
    for run in with_drift:
        records = [r for r in run.requests if r.drift]
        to_base.append(figs.Series(run.title, [r.index for r in records],
                                   [as_float(r.drift.get("to_base", {}).get("total")) for r in records]))
        to_previous.append(figs.Series(run.title, [r.index for r in records],
                                       [as_float(r.drift.get("to_previous", {}).get("total")) for r in records]))
        rows += [[run.title, str(r.index), r.concept, fmt_norm(r.drift.get("to_base", {}).get("total")),
                  fmt_norm(r.drift.get("to_previous", {}).get("total"))] for r in records]
    section.blocks.append(Figure("drift.png", figs.drift_curves(to_base, to_previous),
                                 "L2 norm of the trainable weights' change after each request"))
    for run in with_drift:
        last = [r for r in run.requests if r.drift][-1]
        base_layers = _kv_layers(last.drift.get("to_base", {}).get("layers", {}))
        prev_layers = last.drift.get("to_previous", {}).get("layers", {})
        if not base_layers:
            section.blocks.append(Note(f"{run.title}: drift.json of request {last.index} has no per-layer norms."))
            continue
        keep = sorted(base_layers, key=lambda k: -as_float(base_layers[k]))[:MAX_LAYER_BARS]
        layers = {k: (as_float(base_layers[k]), as_float(prev_layers.get(k))) for k in base_layers if k in keep}
        section.blocks.append(Figure(
            f"{slugs[run.name]}-layer-drift.png",
            figs.layer_drift(layers, f"{run.title}: per-layer drift after request {last.index} ({last.concept})"),
            f"{run.title}: per-layer (cross-attention K / V) drift after the last request",
        ))
    for run in runs:
        if run not in with_drift:
            section.blocks.append(Note(f"{run.title}: no drift.json."))
    section.blocks.append(Table("Drift per request", ["run", "request", "concept", "||theta - base||", "||theta - previous||"], rows))
    return section


def semantic_section(runs: list[RunRecord], slugs: dict[str, str]) -> Section:
    """Accuracy drop and K / V change of retained concepts against their similarity to each target."""
    section = Section("Semantic similarity and forgetting")
    with_semantic = [run for run in runs if any(r.semantic for r in run.requests)]
    if not with_semantic:
        section.blocks.append(Note("No run has semantic.json: " + "; ".join(
            f"{run.title}: {why_no_semantic(run)}" for run in runs) + "."))
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
                    points[key].append(as_float(concept.get(key)))
                points["request"].append(request.index)
                points["in_domain"].append(concept.get("kind") == kind)
            rows.append([run.title, str(request.index), str(request.semantic.get("target", request.concept)),
                         str(sum(c.get("kind") == kind for c in concepts)),
                         fmt_norm(request.semantic.get("pearson_similarity_drop")),
                         fmt_norm(request.semantic.get("pearson_similarity_kv"))])
        mask = np.asarray(points["in_domain"], dtype=bool)
        sim = np.asarray(points["similarity"], dtype=float)[mask]
        pooled_drop = figs.pearson(sim, np.asarray(points["drop"], dtype=float)[mask])
        kv = (np.asarray(points["k_change"], dtype=float) + np.asarray(points["v_change"], dtype=float))[mask] / 2
        rows.append([run.title, "pooled", "all", str(int(mask.sum())), fmt_norm(pooled_drop), fmt_norm(figs.pearson(sim, kv))])
        domain = " / ".join(f"retained {k}s" for k in sorted(kinds))
        section.blocks.append(Figure(
            f"{slugs[run.name]}-semantic.png",
            figs.semantic_scatter(points["similarity"], points["drop"], points["k_change"], points["v_change"],
                                  points["request"], points["in_domain"], domain, run.title),
            f"{run.title}: accuracy drop and K/V change vs similarity to the target, pooled over requests "
            f"(Pearson r = {fmt_norm(pooled_drop)})",
        ))
    for run in runs:
        if run not in with_semantic:
            section.blocks.append(Note(f"{run.title}: no semantic.json ({why_no_semantic(run)})."))
            continue
        subset = [r for r in run.requests if r.semantic and (r.semantic.get("scored_on") or {}).get("prompts") == "subset"]
        if subset:
            images = subset[0].semantic["scored_on"].get("images_per_model", "?")
            seconds = [as_float(r.semantic["scored_on"].get("seconds")) for r in subset]
            section.blocks.append(Note(
                f"{run.title}: the accuracies of requests {[r.index for r in subset]} were scored on a fixed subset of "
                f"{images} evaluation images per model, sampled before and after the request (it was evaluated every "
                f"{(run.info or {}).get('evaluate_every', 'n')} requests), costing {np.nanmean(seconds):.1f} s per request; "
                "coarser than a full evaluation."))
        missing = [r.index for r in run.requests if r.index > 0 and not r.semantic]
        if missing:
            section.blocks.append(Note(f"{run.title}: requests {missing} have no semantic.json ({why_no_semantic(run)})."))
    section.blocks.append(Table(
        "Pearson correlations per request, over the retained concepts of the target's kind",
        ["run", "request", "target", "concepts", "r(similarity, drop)", "r(similarity, K/V change)"], rows,
    ))
    return section


def why_no_semantic(run: RunRecord) -> str:
    """Why (some of) a run's requests have no ``semantic.json``, from what the run folder records."""
    settings = {**(run.settings or {}), **(run.info or {})}
    if settings.get("semantic_analysis") is False:
        return "the analysis was turned off (--stream.semantic_analysis=false)"
    if int(settings.get("evaluate_every") or 1) > 1:
        return (f"the run evaluated every {settings['evaluate_every']} requests and was written by a version that "
                "skipped the analysis then (it needs accuracies before and after each request)")
    if len(run.results) <= 1:
        return "no request was served yet"
    return "not recorded by the version that wrote this run folder"


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
    """A grid.png as RGB pixels, at most ``max_side`` a side."""
    from PIL import Image

    with Image.open(path) as image:
        return figs.shrink(np.asarray(image.convert("RGB")), max_side)


def grids_section(runs: list[RunRecord], slugs: dict[str, str]) -> Section:
    """Per run, a gallery of its evaluation grids: the base beside each (or a thinned set of) request."""
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
            section.blocks.append(Note(f"{run.title}: no grid.png."))
            continue
        left_out = [r.index for r in run.requests if r.grid and r not in with_grid]
        if left_out:
            section.blocks.append(Note(f"{run.title}: grids of requests {left_out} left out to keep the page light "
                                       "(they are in the run folder)."))
        styles, objects = run.vocabulary()
        gallery = Gallery(f"{run.title}: base model (left) and after each request (right)")
        for request in with_grid:
            gone = run.erased_after(request.index)
            title = "base model" if request.index == 0 else f"after request {request.index}: {request.concept}"
            gallery.figures.append(Figure(
                f"{slugs[run.name]}-grid-{request.index:02d}.png",
                figs.grid_figure(_load_grid(request.grid, max_side), styles, objects,
                                 {c for c, k in gone if k == "style"}, {c for c, k in gone if k == "object"}, title),
                f"{run.title}: {title}",
            ))
        section.blocks.append(gallery)
        if with_grid[0].index != 0:
            section.blocks.append(Note(f"{run.title}: no base grid (requests/00-base/grid.png)."))
    if max_side < GRID_MAX_SIDE:
        section.blocks.append(Note(f"{count} grids in this report: each downscaled to at most {max_side} px a side to keep the page light."))
    return section


def results_section(runs: list[RunRecord]) -> Section:
    """Per run, results.json as a table (RESULT_HEADERS)."""
    section = Section("Results per request")
    for run in runs:
        rows = [[metric_cell(row, key, digits) for key, _, digits in RESULT_HEADERS] for row in run.results]
        section.blocks.append(Table(f"{run.title} ({run.path})", [h for _, h, _ in RESULT_HEADERS], rows))
    if all(collapsed(row) is None for run in runs for row in run.results):
        section.blocks.append(Note("No run records the collapse indicator (top share, collapsed): run folders written "
                                   "before it existed."))
    section.blocks.append(Paragraph(INTERVAL_NOTE))
    return section


def build_sections(runs: list[RunRecord], sweeps: list[dict[str, Any]] | None = None) -> list[Section]:
    """Every section of the report, in reading order; a study's sweep rows add "Strength sweeps"."""
    slugs: dict[str, str] = {}
    for run in runs:
        base = slug(run.name)
        candidate, n = base, 2
        while candidate in slugs.values():
            candidate, n = f"{base}-{n}", n + 1
        slugs[run.name] = candidate
    # Robustness appears only in reports over runs that attacked (``--stream.attacks``).
    robustness = [attacks_section(runs)] if any(attacked(run) for run in runs) else []
    return [
        runs_section(runs), replicates_section(runs), *([sweeps_section(sweeps)] if sweeps else []), curves_section(runs),
        *robustness, heatmap_section(runs, slugs),
        cost_section(runs),
        drift_section(runs, slugs), semantic_section(runs, slugs), grids_section(runs, slugs), results_section(runs),
    ]
