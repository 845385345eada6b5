"""The paired across-the-stream test (``lightning_unlearn.attacks.trend``) on hand-made run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_unlearn.attacks.trend import CANNOT_TELL, LESS_ROBUST, MORE_ROBUST, NO_ATTACK, NO_CHANGE, stream_trend
from lightning_unlearn.findings.rules import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE
from lightning_unlearn.intervals import wilson
from lightning_unlearn.requests import Request
from lightning_unlearn.run_folder import ATTACKS_FILE, RunFolder

IMAGES = 36


def target(concept: str, relearn_hits: list[int], embedding_hits: int) -> dict:
    """One attacked concept as attacks.json records it: relearning's curve at steps 0, 1, 5."""
    curve = [{"steps": s, "hits": h, "images": IMAGES} for s, h in zip((0, 1, 5), relearn_hits)]
    return {"concept": concept, "kind": "style", "attacks": {
        "relearn": {"hits": relearn_hits[-1], "images": IMAGES, "curve": curve},
        "embedding": {"hits": embedding_hits, "images": IMAGES},
    }}


def write_run(path: Path, attacked: list[list[dict]], committed: int) -> Path:
    """A run folder whose request k (1-based) attacked ``attacked[k-1]``; the ledger commits ``committed``."""
    folder = RunFolder(path)
    path.mkdir(parents=True)
    folder.ledger_path.write_text(json.dumps({"completed": [{} for _ in range(committed)]}))
    for index, targets in enumerate(attacked):
        request = Request(targets[-1]["concept"], "style")
        out = folder.request_dir(index, request)
        out.mkdir(parents=True)
        (out / ATTACKS_FILE).write_text(json.dumps({"targets": targets}))
    return path


def test_pools_earlier_concepts_and_judges_the_change(tmp_path):
    a1, b2 = target("A", [0, 2, 10], 5), target("B", [1, 3, 12], 4)
    a3, b3, c3 = target("A", [20, 30, 36], 30), target("B", [18, 30, 35], 31), target("C", [0, 0, 0], 0)
    run = write_run(tmp_path / "run", [[a1], [a1, b2], [a3, b3, c3]], committed=3)
    trend = stream_trend(run)
    assert trend.last_request == 3
    rows = {t.attack: t for t in trend.trends}
    assert [t.attack for t in trend.trends] == [NO_ATTACK, "embedding", "relearn@1", "relearn@5"]
    # C was erased at the last request: it has no "before" and stays out.
    assert rows["relearn@5"].concepts == ["A", "B"]
    own, last = rows["relearn@5"].own, rows["relearn@5"].last
    assert (own.hits, own.images, last.hits, last.images) == (22, 72, 71, 72)
    estimate = own.estimate()
    assert estimate.value == pytest.approx(100 * 22 / 72)
    assert (estimate.low, estimate.high) == pytest.approx(wilson(22, 72))
    assert rows["relearn@5"].change.value == pytest.approx(100 * (71 - 22) / 72)
    assert rows["relearn@5"].verdict == HOLDS and rows["relearn@5"].direction == LESS_ROBUST
    assert rows[NO_ATTACK].own.hits == 1 and rows[NO_ATTACK].last.hits == 38 and rows[NO_ATTACK].verdict == HOLDS


def test_no_change_over_many_images_does_not_hold_and_few_images_are_inconclusive(tmp_path):
    same = [target("A", [5, 10, 20], 10)]
    run = write_run(tmp_path / "run", [same, same], committed=2)
    # 36 images each side: 0 change, interval about +-22 points, so it cannot rule out +10.
    embedding = {t.attack: t for t in stream_trend(run).trends}["embedding"]
    assert embedding.verdict == INCONCLUSIVE and embedding.direction == CANNOT_TELL
    many = [target(c, [5, 10, 20], 10) for c in "ABCDEFGH"]
    run = write_run(tmp_path / "many", [many, [*many, target("Z", [0, 0, 0], 0)]], committed=2)
    rows = {t.attack: t for t in stream_trend(run).trends}
    assert rows["embedding"].own.images == 8 * IMAGES and rows["embedding"].change.value == 0
    assert rows["embedding"].change.high < 10 and rows["embedding"].verdict == DOES_NOT_HOLD
    assert rows["embedding"].direction == NO_CHANGE


def test_a_significant_fall_reads_more_robust(tmp_path):
    before = [target(c, [0, 10, 30], 30) for c in "ABCD"]
    after = [target(c, [0, 2, 10], 10) for c in "ABCD"]
    run = write_run(tmp_path / "run", [before, [*after, target("Z", [0, 0, 0], 0)]], committed=2)
    rows = {t.attack: t for t in stream_trend(run).trends}
    assert rows["relearn@5"].change.high < 0
    assert rows["relearn@5"].verdict == DOES_NOT_HOLD and rows["relearn@5"].direction == MORE_ROBUST


def test_runs_without_a_second_measurement_have_no_trend(tmp_path):
    # targets=latest: each concept attacked once.
    latest = write_run(tmp_path / "latest", [[target("A", [0, 0, 0], 0)], [target("B", [0, 0, 0], 0)]], committed=2)
    assert stream_trend(latest) is None
    # The second request's attacks.json exists but the ledger never committed it (a kill).
    killed = write_run(tmp_path / "killed", [[target("A", [0, 0, 0], 0)], [target("A", [9, 9, 9], 9)]], committed=1)
    assert stream_trend(killed) is None
