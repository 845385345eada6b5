"""Reports that never mislead: an unfinished run, the semantic analysis of a run evaluated every
second request, a collapsed checkpoint, and labels read from run.json (or, for older folders,
made from the class and settings config.yaml records)."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from lightning_unlearn.atomic_io import write_json
from lightning_unlearn.cli import main
from lightning_unlearn.report.runs import load_run
from lightning_unlearn.run_folder import COLLAPSE_COLUMNS, RunFolder
from lightning_unlearn.study import progress

from tests.report.test_report import parse_page


def tables(page) -> dict[str, dict]:
    return {t["caption"]: t for t in page.tables}


def page_text(path: Path) -> str:
    """The page's text (tags dropped, entities decoded): notes and paragraphs alike."""
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def test_an_unfinished_run_says_how_far_it_got_from_what_its_folder_records(unfinished_run):
    assert RunFolder(unfinished_run).progress() == (2, 3)  # the ledger's commits, run.json's plan
    assert progress(unfinished_run) == {"done": 2, "planned": 3, "finished": False,
                                        "requests": "2 of 3 requests, unfinished"}
    run = load_run(unfinished_run)
    assert (run.done, run.planned, run.finished) == (2, 3, False)
    assert run.title == "esd_three_styles (unfinished: 2 of 3 requests)"


def test_a_report_over_a_finished_and_an_unfinished_run_marks_the_unfinished_one_everywhere(
        stream_run, unfinished_run, tmp_path):
    out = tmp_path / "report"
    main(["report", str(stream_run), str(unfinished_run), "--out", str(out)])
    page = parse_page(out / "report.html")
    [runs] = [t for t in page.tables if t["caption"].startswith("Runs")]
    assert "finished and unfinished runs mixed" in runs["caption"]
    finished, unfinished = (dict(zip(runs["headers"], row)) for row in runs["rows"])
    assert finished["requests done"] == "2 of 2 requests" and finished["numbers"] == "final, after request 2"
    assert unfinished["run"] == "esd_three_styles (unfinished: 2 of 3 requests)"
    assert unfinished["requests done"] == "2 of 3 requests, unfinished" and unfinished["numbers"] == "after request 2"
    assert not any("final" in cell for cell in unfinished.values())
    assert not any("final" in h for h in runs["headers"])
    text = page_text(out / "report.html")
    assert "This table mixes finished and unfinished runs" in text
    assert "esd_three_styles is unfinished (2 of 3 requests done)" in text
    # Its per-request table and every caption that names it carry the mark.
    assert any(c.startswith("esd_three_styles (unfinished: 2 of 3 requests) (") for c in tables(page))
    assert "esd_three_styles:" not in text  # never named without its mark


def test_semantic_analysis_runs_on_a_fixed_subset_when_evaluating_every_second_request(unfinished_run, tmp_path):
    rows = json.loads((unfinished_run / "results.json").read_text())
    assert "collapsed" not in rows[1] and rows[2]["collapsed"] is False  # request 1 was not evaluated
    for folder in ("01-van-gogh", "02-cartoon"):
        semantic = json.loads((unfinished_run / "requests" / folder / "semantic.json").read_text())
        scored = semantic["scored_on"]
        # 4 styles x 3 objects: the cells with (s + o) mod 3 = 0, every style and object covered.
        assert scored["prompts"] == "subset" and scored["images_per_model"] == 4 and scored["seconds"] > 0
        assert {c["concept"] for c in semantic["concepts"]} >= {"Monet", "Pop Art", "circle", "star", "house"}
    main(["report", str(unfinished_run), "--out", str(tmp_path / "report")])
    notes = "\n".join(parse_page(tmp_path / "report" / "report.html").notes)
    assert "requests [1, 2] were scored on a fixed subset of 4 evaluation images per model" in notes
    assert "evaluated every 2 requests" in notes


def test_a_run_without_semantic_analysis_says_why(stream_run, copy_run, tmp_path):
    run = copy_run(stream_run, tmp_path / "off")
    for path in run.rglob("semantic.json"):
        path.unlink()
    info = json.loads((run / "run.json").read_text())
    write_json({**info, "semantic_analysis": False}, run / "run.json")
    main(["report", str(run)])
    notes = "\n".join(parse_page(run / "report" / "report.html").notes)
    assert "the analysis was turned off (--stream.semantic_analysis=false)" in notes
    write_json({**info, "semantic_analysis": True, "evaluate_every": 4}, run / "run.json")
    main(["report", str(run)])
    notes = "\n".join(parse_page(run / "report" / "report.html").notes)
    assert "the run evaluated every 4 requests and was written by a version that skipped the analysis" in notes


def collapse(run: Path, request: int, share: float) -> None:
    """Mark request ``request`` of a copied run as a collapsed checkpoint in results.json (as the
    evaluation would record an object head that puts ``share`` of the retained images in one class)."""
    rows = json.loads((run / "results.json").read_text())
    rows[request].update(object_top_share=share, collapsed=True)
    RunFolder(run).write_results(rows)


def test_a_collapsed_checkpoint_marks_its_ua_and_older_folders_still_load(stream_run, copy_run, tmp_path):
    run = copy_run(stream_run, tmp_path / "collapsed")
    collapse(run, 2, 0.97)
    older = copy_run(stream_run, tmp_path / "older")
    rows = [{k: v for k, v in row.items() if k not in COLLAPSE_COLUMNS} for row in json.loads((older / "results.json").read_text())]
    (older / "results.json").write_text(json.dumps(rows))
    main(["report", str(run), str(older), "--out", str(tmp_path / "report")])
    page = parse_page(tmp_path / "report" / "report.html")
    [runs] = [t for t in page.tables if t["caption"].startswith("Runs")]
    marked, old = (dict(zip(runs["headers"], row)) for row in runs["rows"])
    assert marked["UA"].endswith(" (collapsed)") and marked["collapsed"] == "yes"
    assert not old["UA"].endswith(" (collapsed)") and old["collapsed"] == "-"
    per_request = tables(page)[f"esd_two_styles ({run})"]  # run.json keeps the name the run was made with
    assert [r[-1] for r in per_request["rows"]] == ["no", "no", "yes"]
    assert per_request["rows"][2][3].endswith(" (collapsed)")
    text = page_text(tmp_path / "report" / "report.html")
    assert "collapsed: at that checkpoint a classifier head that UA is read with puts over 50%" in text
    assert "esd_two_styles: collapsed at requests 2 (97%)" in text


def test_labels_come_from_run_json_and_older_folders_describe_their_config(stream_run, copy_run, tmp_path):
    info = json.loads((stream_run / "run.json").read_text())
    assert info["callbacks"] == [{"label": "drift recorder", "class": "lightning_unlearn.callbacks.drift.DriftRecorder",
                                  "name": None, "settings": {}}]
    assert info["protocol_label"] == "sequential"
    # An older folder: run.json lists short names; config.yaml records the classes and settings.
    run = copy_run(stream_run, tmp_path / "older")
    (run / "tensorboard").mkdir()
    config = (stream_run / "tensorboard" / "config.yaml").read_text()
    config = config.replace("  callbacks:\n", "  callbacks:\n"
                            "  - class_path: lightning_unlearn.callbacks.anchor.AnchorRegularizer\n"
                            "    init_args:\n      kind: l2\n      weight: 705.0\n", 1)
    (run / "tensorboard" / "config.yaml").write_text(config)
    write_json({**{k: v for k, v in info.items() if k != "protocol_label"}, "callbacks": ["l2_previous", "DriftRecorder"],
                "protocol": "independent", "merge": {"method": "ties", "lambda_": 1.0, "top_k": 0.2}}, run / "run.json")
    record = load_run(run)
    assert record.callback_labels == ["L2 to previous, w=705", "drift recorder"]
    assert record.protocol_label == "independent, merged: TIES λ=1.0, top 20%"
    shutil.rmtree(run / "tensorboard")  # without a config the short names are shown as recorded
    assert load_run(run).callback_labels == ["l2_previous", "DriftRecorder"]
