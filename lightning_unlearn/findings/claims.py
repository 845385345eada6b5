"""The paper's five findings and its regularizer table, checked against a study's runs.

Run names say what a run is: ``<method>_<domain>_<setting>``, e.g. ``ca_styles_sequential``,
``ca_objects_projection_topk`` (method ``ca`` or ``esd``, domain ``styles`` or ``objects``, a
setting of :data:`lightning_unlearn.findings.paper.SETTINGS`). A profile's study config
(``configs/tinyworld/findings_{quick,full}.yaml``) holds such runs; any study with runs so named
can be checked. Every check compares numbers after the last evaluated request, with the 95%
intervals the run folders carry (replicates: the t interval of their mean), by the rules of
:mod:`lightning_unlearn.findings.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_unlearn.findings.data import RunResults, StudyResults
from lightning_unlearn.findings.paper import (
    BEYOND_PAPER, DOMAINS, FINDINGS, METHODS, PAPER_TABLE, REGULARIZERS, SETTINGS,
)
from lightning_unlearn.findings.rules import (
    COST_FACTOR,
    DOES_NOT_HOLD,
    DRIFT_FACTOR,
    HOLDS,
    INCONCLUSIVE,
    NOT_RUN,
    RULES,
    Estimate,
    correlation_verdict,
    difference_verdict,
    mean_estimate,
    overall_verdict,
    ratio_verdict,
)

UA_KEPT = 90.0
"""A regularizer's retention gain counts only while erasure holds: its final UA's interval must
reach this (the paper's UA stays at 96-100)."""


@dataclass
class Check:
    """One comparison behind a finding, on one method and domain."""

    label: str
    ours: str
    paper: str
    verdict: str
    rule: str
    """A key of :data:`lightning_unlearn.findings.rules.RULES`."""
    note: str = ""


@dataclass
class Finding:
    """One of the paper's findings: its words and number, our checks and the verdict over them."""

    number: int
    title: str
    statement: str
    paper: str
    checks: list[Check] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return overall_verdict([c.verdict for c in self.checks])

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict, "rule": RULES["all"]}


def run_name(method: str, domain: str, setting: str) -> str:
    """``ca_styles_sequential``: the run a check reads."""
    return f"{method}_{domain}_{setting}"


def streams(results: StudyResults) -> list[tuple[str, str, RunResults]]:
    """``(method, domain, its sequential run)`` of every stream whose sequential run finished, in a
    fixed order: every check compares with, or reads, that run."""
    found = [(m, d, results.get(run_name(m, d, "sequential"))) for m in METHODS for d in DOMAINS]
    return [(m, d, run) for m, d, run in found if run is not None]


def where(method: str, domain: str, run: RunResults | None = None) -> str:
    """``CA styles (4 requests)``: the stream a check is on."""
    served = f" ({run.requests} requests)" if run is not None else ""
    return f"{METHODS[method].replace('Concept Ablation', 'CA')} {domain}{served}"


def missing(label: str, *names: str) -> Check:
    return Check(label, "-", "-", NOT_RUN, "difference", note="needs the finished run(s) " + ", ".join(names))


def retention(run: RunResults) -> Estimate:
    """Mean of IRA and CRA after the last evaluated request."""
    return run.metric("IRA").mean_with(run.metric("CRA"))


def collapse_note(run: RunResults) -> str:
    return f"{run.name}'s last evaluated model collapsed (most retained images in one class)" if run.collapsed() else ""


def finding_collapse(results: StudyResults) -> Finding:
    """Finding 1: sequential loses in- and cross-domain retention; simultaneous keeps more cross-domain."""
    finding = Finding(1, *FINDINGS[1])
    for method, domain, seq in streams(results):
        at = where(method, domain, seq)
        paper = PAPER_TABLE[(domain, "IRA")]["sequential"], PAPER_TABLE[(domain, "CRA")]["sequential"]
        for metric, paper_final in zip(("IRA", "CRA"), paper):
            loss = seq.metric(metric, 0).minus(seq.metric(metric))
            finding.checks.append(Check(
                f"{at}: sequential loses {metric} (base - final)", loss.text(),
                f"final {metric} {paper_final} after 12" if method == "ca" else "-",
                difference_verdict(loss), "difference", collapse_note(seq)))
        sim = results.get(run_name(method, domain, "simultaneous"))
        label = f"{at}: simultaneous keeps more CRA than sequential"
        if sim is None:
            finding.checks.append(missing(label, run_name(method, domain, "simultaneous")))
            continue
        gain = sim.metric("CRA").minus(seq.metric("CRA"))
        paper_gain = PAPER_TABLE[(domain, "CRA")]["simultaneous"] - PAPER_TABLE[(domain, "CRA")]["sequential"]
        finding.checks.append(Check(label, gain.text(), f"{paper_gain:+g}" if method == "ca" else "-",
                                    difference_verdict(gain), "difference"))
    return finding


def protocol_pairs(results: StudyResults, finding: Finding, what: str
                   ) -> Iterator[tuple[str, str, str, RunResults, RunResults]]:
    """``(method, domain, label, sequential, simultaneous)`` of every stream with both protocols
    finished; a stream without its simultaneous run gets a ``not run`` check instead."""
    for method, domain, seq in streams(results):
        sim = results.get(run_name(method, domain, "simultaneous"))
        label = f"{where(method, domain, seq)}: {what}"
        if sim is None:
            finding.checks.append(missing(label, run_name(method, domain, "simultaneous")))
            continue
        yield method, domain, label, seq, sim


def finding_cost(results: StudyResults) -> Finding:
    """Finding 2: simultaneous's cumulative steps outgrow sequential's."""
    finding = Finding(2, *FINDINGS[2])
    for _, _, label, seq, sim in protocol_pairs(results, finding, "cumulative steps, simultaneous / sequential"):
        seq_total, sim_total = seq.mean_column("cumulative_steps").value, sim.mean_column("cumulative_steps").value
        first, last = sim.mean_column("train_steps", 1).value, sim.mean_column("train_steps").value
        ratio = sim_total / seq_total if seq_total > 0 else float("nan")
        verdict = ratio_verdict(ratio, COST_FACTOR)
        if verdict == HOLDS and not last > first:
            verdict = INCONCLUSIVE
        finding.checks.append(Check(
            label, f"{sim_total:.0f} / {seq_total:.0f} = {ratio:.3f}x (simultaneous's requests: {first:.0f} steps "
            f"first, {last:.0f} last)", "19.4k / 5.3k = 3.7x after 12", verdict, "cost",
            "step counts of one order; replicates give their mean"))
    return finding


def finding_drift(results: StudyResults) -> Finding:
    """Finding 3: sequential drifts further from the base than simultaneous."""
    finding = Finding(3, *FINDINGS[3])
    for _, _, label, seq, sim in protocol_pairs(results, finding, "drift from the base, sequential / simultaneous"):
        seq_drift, sim_drift = seq.mean_column("drift_to_base"), sim.mean_column("drift_to_base")
        ratio = seq_drift.value / sim_drift.value if sim_drift.value > 0 else float("nan")
        finding.checks.append(Check(
            label, f"{seq_drift.text(2)} / {sim_drift.text(2)} = {ratio:.3f}x", "3.4 / <1.5 = >2.3x (per layer)",
            ratio_verdict(ratio, DRIFT_FACTOR), "drift", "L2 norm of theta - base over the trainable keys"))
    return finding


def finding_similarity(results: StudyResults) -> Finding:
    """Finding 4: per request, retained concepts closer to the target lose more, and their K/V change more."""
    finding = Finding(4, *FINDINGS[4])
    for method, domain, seq in streams(results):
        at = where(method, domain, seq)
        for key, what, paper in (("pearson_similarity_drop", "similarity vs accuracy drop", "+0.63"),
                                 ("pearson_similarity_kv", "similarity vs K/V output change", "positive")):
            values = seq.semantic_values(key)
            r = mean_estimate(values)
            finding.checks.append(Check(
                f"{at}: mean per-request r, {what}", f"{r.text(2)} over {len(values)} request(s)", paper,
                correlation_verdict(r) if values else NOT_RUN, "correlation",
                f"each request's r is over the retained {DOMAINS[domain]}s" if values else "no semantic.json records"))
    return finding


def finding_regularizers(results: StudyResults) -> Finding:
    """Finding 5: each regularizer retains more than sequential (while UA holds); projection retains
    best in-domain; projection + top-k beats either alone."""
    finding = Finding(5, *FINDINGS[5])
    for method, domain, seq in streams(results):
        at = where(method, domain, seq)
        base = retention(seq)
        kept: dict[str, RunResults] = {}
        for setting in REGULARIZERS:
            run = results.get(run_name(method, domain, setting))
            label = f"{at}: {SETTINGS[setting]} retains more than sequential (mean of IRA, CRA)"
            if run is None:
                finding.checks.append(missing(label, run_name(method, domain, setting)))
                continue
            gain = retention(run).minus(base)
            verdict, note = difference_verdict(gain), ""
            ua = run.metric("UA")
            if run.collapsed():
                verdict, note = (INCONCLUSIVE if verdict == HOLDS else verdict), f"collapsed: UA {ua.text()} means nothing"
            elif math.isfinite(ua.high) and ua.high < UA_KEPT:
                verdict, note = DOES_NOT_HOLD, f"erasure lost: UA {ua.text()} < {UA_KEPT:g}"
            else:
                kept[setting] = run
                note = f"UA {ua.text()}"
            paper = [PAPER_TABLE[(domain, m)].get(setting) for m in ("IRA", "CRA")]
            paper_seq = [PAPER_TABLE[(domain, m)]["sequential"] for m in ("IRA", "CRA")]
            paper_gain = (f"{(sum(paper) - sum(paper_seq)) / 2:+g}" if method == "ca" and None not in paper else "-")
            finding.checks.append(Check(label, gain.text(), paper_gain, verdict, "difference", note))
        projection = results.get(run_name(method, domain, "projection"))
        others = {s: r for s, r in kept.items() if s != "projection"}
        label = f"{at}: GradProj's IRA above the best other regularizer's (UA kept)"
        if projection is None:
            finding.checks.append(missing(label, run_name(method, domain, "projection")))
        elif not others:
            # Nothing to beat: every other regularizer gave up erasure (or collapsed).
            gain = projection.metric("IRA").minus(seq.metric("IRA"))
            finding.checks.append(Check(
                label, "-", "+21 (objects: 60 vs 39)" if domain == "objects" else "-", INCONCLUSIVE, "difference",
                f"no other regularizer kept UA >= {UA_KEPT:g}; GradProj's IRA - sequential's: {gain.text()}"))
        else:
            best = max(others, key=lambda s: others[s].metric("IRA").value)
            lead = projection.metric("IRA").minus(others[best].metric("IRA"))
            note = f"best other: {SETTINGS[best]} ({others[best].metric('IRA').text()})"
            if "projection" not in kept:
                note += "; GradProj itself did not keep UA"
            finding.checks.append(Check(label, lead.text(), "+21 (objects: 60 vs 39)" if domain == "objects" else "-",
                                        difference_verdict(lead), "difference", note))
        combined = results.get(run_name(method, domain, "projection_topk"))
        topk = results.get(run_name(method, domain, "topk"))
        label = f"{at}: GradProj + top-k retains more than the better of the two alone"
        if combined is None or projection is None or topk is None:
            finding.checks.append(missing(label, *(run_name(method, domain, s) for s in ("projection_topk", "projection", "topk"))))
        else:
            better = max((projection, topk), key=lambda r: retention(r).value)
            lead = retention(combined).minus(retention(better))
            verdict, ua = difference_verdict(lead), combined.metric("UA")
            note = f"better alone: {better.name}; UA {ua.text()}"
            if combined.collapsed():
                verdict, note = (INCONCLUSIVE if verdict == HOLDS else verdict), note + " (collapsed: means nothing)"
            elif math.isfinite(ua.high) and ua.high < UA_KEPT:
                verdict, note = DOES_NOT_HOLD, note + f": erasure lost (< {UA_KEPT:g})"
            finding.checks.append(Check(label, lead.text(), "gains reported, no number", verdict, "difference", note))
    return finding


def check_findings(results: StudyResults) -> list[Finding]:
    """The five findings, in the paper's order."""
    return [finding_collapse(results), finding_cost(results), finding_drift(results), finding_similarity(results),
            finding_regularizers(results)]


@dataclass
class TableCell:
    """Ours with its interval, whether it differs from sequential (the difference's interval
    excludes 0), and the paper's number."""

    ours: Estimate
    versus_sequential: str
    """``above`` / ``below`` sequential, or ``""`` (inside the noise, or sequential itself)."""
    paper: float | None
    collapsed: bool


def table_runs(method: str, domain: str) -> dict[str, str]:
    """``{column label: run name}`` of ``method``'s table on ``domain``: the paper's settings, then
    those beyond it, then (ESD's table) UCE's closed-form stream."""
    columns = {label: run_name(method, domain, s) for s, label in {**SETTINGS, **BEYOND_PAPER}.items()}
    if method == "esd":
        columns["UCE (closed form)"] = run_name("uce", domain, "sequential")
    return columns


def regularizer_table(results: StudyResults, method: str = "ca") -> dict[tuple[str, str], dict[str, TableCell]]:
    """``{(domain, metric): {column label: cell}}``, the paper's table (UA, IRA, CRA after the last
    evaluated request) on ``method``'s runs (:func:`table_runs`); runs that did not finish are
    left out."""
    table: dict[tuple[str, str], dict[str, TableCell]] = {}
    for domain in DOMAINS:
        seq = results.get(run_name(method, domain, "sequential"))
        if seq is None:
            continue
        for metric in ("UA", "IRA", "CRA"):
            row: dict[str, TableCell] = {}
            for label, name in table_runs(method, domain).items():
                run = results.get(name)
                if run is None:
                    continue
                ours = run.metric(metric)
                side = ""
                if run is not seq:
                    difference = ours.minus(seq.metric(metric))
                    if difference.has_interval and difference.low > 0:
                        side = "above"
                    elif difference.has_interval and difference.high < 0:
                        side = "below"
                setting = name.removeprefix(f"{method}_{domain}_")
                paper = PAPER_TABLE.get((domain, metric), {}).get(setting) if method == "ca" else None
                row[label] = TableCell(ours, side, paper, bool(run.collapsed()))
            table[(domain, metric)] = row
    return table

