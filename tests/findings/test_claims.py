"""The five findings and the regularizer table (``lightning_unlearn.findings.claims``) on
hand-made results: the numbers are chosen so each verdict is known in advance."""

from __future__ import annotations

import json
from pathlib import Path

from lightning_unlearn.findings.claims import check_findings, regularizer_table
from lightning_unlearn.findings.data import RunResults, StudyResults
from lightning_unlearn.findings.rules import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NOT_RUN
from lightning_unlearn.intervals import wilson

N = 432  # retained images of a 4-request style stream at 3 images a prompt


def row(request: int, ua: float, ira: float, cra: float, n: int = N, **extra) -> dict:
    """A results row whose metrics are hits / n with their Wilson bounds."""
    out = {"request": request, "concept": f"c{request}", "kind": "style", **extra}
    for name, value in (("UA", ua), ("IRA", ira), ("CRA", cra)):
        low, high = wilson(round(value * n / 100), n) if value == value else (float("nan"),) * 2
        out.update({name: value, f"{name}_lo": low, f"{name}_hi": high})
    return out


def run(name: str, final: tuple[float, float, float], *, steps=(100, 100), drift=10.0, collapsed=False,
        folder: Path | None = None) -> RunResults:
    base = row(0, float("nan"), 100.0, 95.0, drift_to_base=0.0, cumulative_steps=0)
    rows = [base,
            row(1, float("nan"), float("nan"), float("nan"), train_steps=steps[0], cumulative_steps=steps[0]),
            row(2, *final, train_steps=steps[1], cumulative_steps=sum(steps), drift_to_base=drift, collapsed=collapsed)]
    return RunResults(name, rows, [rows], [str(folder)] if folder else [])


def study(**runs: RunResults) -> StudyResults:
    return StudyResults({r.name: r for r in runs.values()}, unfinished=[])


def test_a_collapsing_sequential_stream_and_a_cheaper_but_worse_simultaneous_one():
    results = study(
        seq=run("ca_styles_sequential", (95.0, 20.0, 30.0), steps=(100, 100), drift=24.0, collapsed=True),
        sim=run("ca_styles_simultaneous", (97.0, 70.0, 80.0), steps=(100, 300), drift=8.0),
    )
    collapse, cost, drift, similarity, regularizers = check_findings(results)
    assert [c.verdict for c in collapse.checks] == [HOLDS, HOLDS, HOLDS] and collapse.verdict == HOLDS
    assert "collapsed" in collapse.checks[0].note
    assert cost.checks[0].verdict == HOLDS and "400 / 200 = 2.000x" in cost.checks[0].ours
    assert drift.checks[0].verdict == HOLDS and "3.000x" in drift.checks[0].ours
    assert similarity.verdict == NOT_RUN  # no semantic.json anywhere
    assert regularizers.verdict == NOT_RUN and all(c.verdict == NOT_RUN for c in regularizers.checks)


def test_equal_streams_do_not_hold_and_small_samples_stay_inconclusive():
    same = study(seq=run("ca_objects_sequential", (95.0, 90.0, 95.0), drift=5.0),
                 sim=run("ca_objects_simultaneous", (95.0, 90.0, 95.0), steps=(100, 100), drift=5.0))
    collapse, cost, drift, *_ = check_findings(same)
    # IRA 100 -> 90 on 432 images: the loss [~7, ~13] is clear of 0 (holds); CRA unchanged: rules out 10.
    assert [c.verdict for c in collapse.checks] == [HOLDS, DOES_NOT_HOLD, DOES_NOT_HOLD]
    assert cost.verdict == DOES_NOT_HOLD  # simultaneous cost no more than sequential (1.0x)
    assert drift.verdict == DOES_NOT_HOLD
    small = study(seq=run("esd_styles_sequential", (95.0, 92.0, 95.0)))
    small.runs["esd_styles_sequential"].rows = [row(0, float("nan"), 100.0, 95.0, n=12),
                                                row(1, 95.0, 92.0, 95.0, n=12)]
    assert check_findings(small)[0].checks[0].verdict == INCONCLUSIVE  # 12 images cannot tell 8 points


def test_regularizers_are_judged_with_ua_and_collapse_in_mind():
    results = study(
        seq=run("ca_objects_sequential", (95.0, 40.0, 50.0)),
        l1=run("ca_objects_l1", (40.0, 90.0, 95.0)),          # retention bought with erasure: UA < 90
        l2=run("ca_objects_l2", (97.0, 45.0, 52.0)),          # within the noise of sequential
        topk=run("ca_objects_topk", (96.0, 70.0, 80.0)),      # a clear gain, UA kept
        ties=run("ca_objects_ties", (99.0, 80.0, 90.0), collapsed=True),
        projection=run("ca_objects_projection", (97.0, 85.0, 85.0)),
        projection_topk=run("ca_objects_projection_topk", (96.0, 95.0, 95.0)),
    )
    checks = {c.label.split(": ", 1)[1].split(" ")[0]: c for c in check_findings(results)[4].checks}
    assert checks["L1-SP"].verdict == DOES_NOT_HOLD and "erasure lost" in checks["L1-SP"].note
    assert checks["L2-SP"].verdict == DOES_NOT_HOLD  # the gain's interval rules out 10 points
    assert checks["SelFT"].verdict == HOLDS
    assert checks["independent"].verdict == INCONCLUSIVE and "collapsed" in checks["independent"].note
    lead, combined = [c for c in check_findings(results)[4].checks if c.label.split(": ", 1)[1].startswith("GradProj")][1:]
    assert lead.verdict == HOLDS and "SelFT" in lead.note  # 85 vs top-k's 70 (TIES collapsed, L1 lost UA)
    assert combined.verdict == HOLDS  # 95 vs projection's 85
    table = regularizer_table(results)
    assert table[("objects", "IRA")]["SelFT (top-k)"].versus_sequential == "above"
    assert table[("objects", "IRA")]["L2-SP"].versus_sequential == ""
    assert table[("objects", "UA")]["L1-SP"].versus_sequential == "below"
    assert table[("objects", "IRA")]["GradProj"].paper == 60 and table[("objects", "IRA")]["independent + TIES"].collapsed
    assert table[("objects", "IRA")]["sequential"].versus_sequential == ""
    # When every other regularizer gave up erasure there is nothing to beat: inconclusive, said why.
    for name in ("ca_objects_topk", "ca_objects_l2"):
        results.runs[name] = run(name, (50.0, 95.0, 95.0))
    results.runs.pop("ca_objects_ties")
    lead = [c for c in check_findings(results)[4].checks if "best other" in c.label][0]
    assert lead.verdict == INCONCLUSIVE and "no other regularizer kept UA >= 90" in lead.note
    results.runs["ca_objects_projection_topk"] = run("ca_objects_projection_topk", (40.0, 99.0, 99.0))
    combined = [c for c in check_findings(results)[4].checks if "GradProj + top-k" in c.label][0]
    assert combined.verdict == DOES_NOT_HOLD and "erasure lost" in combined.note


def test_the_esd_table_has_the_settings_beyond_the_paper_and_uce():
    results = study(seq=run("esd_styles_sequential", (85.0, 90.0, 88.0)),
                    replay=run("esd_styles_replay", (60.0, 97.0, 95.0)),
                    uce=run("uce_styles_sequential", (99.0, 92.0, 90.0)))
    table = regularizer_table(results, "esd")
    assert list(table[("styles", "UA")]) == ["sequential", "replay", "UCE (closed form)"]
    assert table[("styles", "UA")]["replay"].versus_sequential == "below"
    assert table[("styles", "UA")]["UCE (closed form)"].versus_sequential == "above"
    assert all(cell.paper is None for cell in table[("styles", "IRA")].values())


def test_the_similarity_link_reads_each_requests_semantic_record(tmp_path):
    for number, r_drop, r_kv in ((1, 0.7, 0.9), (2, 0.5, 0.8), (3, 0.6, 0.95)):
        folder = tmp_path / "requests" / f"{number:02d}-c{number}"
        folder.mkdir(parents=True)
        (folder / "semantic.json").write_text(json.dumps({"pearson_similarity_drop": r_drop, "pearson_similarity_kv": r_kv}))
    results = study(seq=run("ca_styles_sequential", (95.0, 50.0, 60.0), folder=tmp_path))
    drop, kv = check_findings(results)[3].checks
    assert drop.verdict == HOLDS and drop.ours.startswith("0.60 [") and "3 request(s)" in drop.ours
    assert kv.verdict == HOLDS
