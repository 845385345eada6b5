"""Do earlier erasures get easier to undo as requests accumulate? The paired across-the-stream test.

A run served with ``--stream.attacks.targets=all_erased`` attacks every concept erased so far after
each request, with the same attacker images and the same evaluation noise each time (the attacks
are seeded by the concept alone). So each concept erased before the last request is measured twice
by the same attack: right after its own request, and after the last one. Pooling those concepts'
images gives, per attack, the ASR at their own request, the ASR after the last request, and the
change, with 95% intervals:

- each ASR is the Wilson interval of the pooled hits over the pooled images;
- the change carries the MOVER interval of a difference of independent proportions
  (:func:`lightning_unlearn.intervals.difference_interval`). The two measurements share prompts
  and noise, so they are positively correlated and this interval is wider than a paired one: a
  change it calls significant is significant;
- the verdict on "less robust as requests accumulate" is the findings' difference rule
  (:data:`lightning_unlearn.findings.rules.RULES` ``difference``): holds when the change's interval
  lies above 0, does not hold when it lies below +10 points, otherwise inconclusive; and, since
  "does not hold" covers both no change and the opposite, :attr:`AttackTrend.direction` says
  which: less robust, more robust (interval below 0), no change of 10+ points, or cannot tell.

Relearning is read at each of its budgets (``relearn@N``), and its curve's step 0 gives the
concept's ASR with no attack at all (``no attack``): whether the erasure itself wears off under
later requests, before anyone attacks it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_unlearn.findings.rules import MARGIN, Estimate, difference_verdict
from lightning_unlearn.intervals import wilson
from lightning_unlearn.run_folder import ATTACKS_FILE, RunFolder

LESS_ROBUST, MORE_ROBUST, NO_CHANGE, CANNOT_TELL = (
    "less robust", "more robust", f"no change of {MARGIN:g}+ points", "cannot tell")
""":attr:`AttackTrend.direction`: the change's 95% interval above 0, below 0, inside +-MARGIN, or none of these."""
NO_ATTACK = "no attack"
"""The row read from relearning's step-0 point: the erased concept's ASR before any attack."""


@dataclass
class Counts:
    """Hits over images, pooled over concepts."""

    hits: int = 0
    images: int = 0

    def add(self, hits: int, images: int) -> None:
        self.hits += int(hits)
        self.images += int(images)

    def estimate(self) -> Estimate:
        """The pooled ASR in percent with its 95% Wilson interval (NaN with no images)."""
        if self.images == 0:
            return Estimate(float("nan"))
        low, high = wilson(self.hits, self.images)
        return Estimate(100.0 * self.hits / self.images, low, high)


@dataclass
class AttackTrend:
    """One attack (or relearning budget) on the concepts erased before the last request."""

    attack: str
    own: Counts = field(default_factory=Counts)
    last: Counts = field(default_factory=Counts)
    concepts: list[str] = field(default_factory=list)

    @property
    def change(self) -> Estimate:
        """ASR after the last request minus ASR after the concept's own request, in points."""
        return self.last.estimate().minus(self.own.estimate())

    @property
    def verdict(self) -> str:
        """Whether these concepts got easier to bring back (the findings' difference rule)."""
        return difference_verdict(self.change)

    @property
    def direction(self) -> str:
        """What the change's interval says in words: ``less robust`` (above 0), ``more robust``
        (below 0), ``no change of 10+ points`` (inside +-10), or ``cannot tell``."""
        change = self.change
        if not change.has_interval:
            return CANNOT_TELL
        if change.low > 0:
            return LESS_ROBUST
        if change.high < 0:
            return MORE_ROBUST
        if -MARGIN < change.low and change.high < MARGIN:
            return NO_CHANGE
        return CANNOT_TELL


@dataclass
class StreamTrend:
    """The paired test of one run folder: per attack, earlier concepts at their own vs the last request."""

    run: Path
    last_request: int
    trends: list[AttackTrend]


def _measurements(attacks: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{row name: (hits, images)}`` of one target's attacks (relearning per budget and at step 0)."""
    rows: dict[str, tuple[int, int]] = {}
    for name, record in attacks.items():
        curve = record.get("curve")
        if curve:
            for point in curve:
                key = NO_ATTACK if int(point["steps"]) == 0 else f"{name}@{int(point['steps'])}"
                rows[key] = (int(point["hits"]), int(point["images"]))
        else:
            rows[name] = (int(record["hits"]), int(record["images"]))
    return rows


def committed_attacks(run_dir: str | Path) -> dict[int, dict[str, dict[str, tuple[int, int]]]]:
    """``{request number: {concept: {row name: (hits, images)}}}`` of the committed requests'
    ``attacks.json`` (a folder past the ledger's count belongs to an unfinished request)."""
    folder = RunFolder(run_dir)
    done, _ = folder.progress()
    found: dict[int, dict[str, dict[str, tuple[int, int]]]] = {}
    for number, path in folder.request_folders().items():
        if 1 <= number <= done and (path / ATTACKS_FILE).is_file():
            record = json.loads((path / ATTACKS_FILE).read_text())
            found[number] = {t["concept"]: _measurements(t["attacks"]) for t in record.get("targets", [])}
    return found


def stream_trend(run_dir: str | Path) -> StreamTrend | None:
    """The paired test of ``run_dir``; ``None`` unless some concept was attacked both after its own
    request and after a later one (a run with ``targets=all_erased`` and two committed requests)."""
    attacked = committed_attacks(run_dir)
    if len(attacked) < 2:
        return None
    last = max(attacked)
    # A concept's own request is the first one that attacked it.
    own_request: dict[str, int] = {}
    for number in sorted(attacked):
        for concept in attacked[number]:
            own_request.setdefault(concept, number)
    earlier = [c for c, n in own_request.items() if n < last and c in attacked[last]]
    if not earlier:
        return None
    trends: dict[str, AttackTrend] = {}
    for concept in earlier:
        before, after = attacked[own_request[concept]][concept], attacked[last][concept]
        for key in before.keys() & after.keys():
            trend = trends.setdefault(key, AttackTrend(key))
            trend.own.add(*before[key])
            trend.last.add(*after[key])
            trend.concepts.append(concept)
    order = sorted(trends, key=lambda k: (k != NO_ATTACK, k.split("@")[0], int(k.split("@")[1]) if "@" in k else 0))
    return StreamTrend(Path(run_dir), last, [trends[k] for k in order])
