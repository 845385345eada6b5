"""Sweep results: one row per setting at the last request, and the rule that picks the best one."""

import math

from lightning_unlearn.sweeps import best_setting, option_label, setting_text, sweep_rows, sweep_verdicts

NAN = float("nan")


def result(run: str, request: int, ua: float, ira: float, cra: float, half: float = 5.0) -> dict:
    row = {"run": run, "request": request, "concept": "Cartoon", "kind": "style", "replicates": 1, "interval": "within run"}
    for metric, value in (("UA", ua), ("IRA", ira), ("CRA", cra)):
        row.update({metric: value, f"{metric}_lo": value - half, f"{metric}_hi": value + half})
    return row


def settings(values):
    return [("l2", f"l2@weight={v}", {"--trainer.callbacks.init_args.weight": v}) for v in values]


def test_rows_take_each_settings_last_request_and_mark_the_best():
    results = [
        result("l2@weight=1", 0, 0, 100, 100), result("l2@weight=1", 3, 100, 40, 70),
        result("l2@weight=10", 3, 97, 60, 80), result("l2@weight=10", 2, 99, 90, 90),
        result("l2@weight=100", 3, 80, 90, 95), result("other", 3, 100, 99, 99),
    ]
    rows = sweep_rows(settings([1, 10, 100, 1000]), results)
    assert [(r["run"], r["request"], r["UA"], r["IRA"], r["best"]) for r in rows[:3]] == [
        ("l2@weight=1", 3, 100, 40, False), ("l2@weight=10", 3, 97, 60, True), ("l2@weight=100", 3, 80, 90, False)]
    # UA 80 has the best IRA but misses the floor; weight=1000 has no finished run
    assert rows[3]["request"] is None and math.isnan(rows[3]["UA"]) and not rows[3]["best"]
    assert rows[1]["IRA_lo"] == 55 and rows[1]["setting"] == "weight=10" and rows[1]["values"] == {"--trainer.callbacks.init_args.weight": 10}
    verdict = sweep_verdicts(rows)["l2"]
    assert verdict.startswith("weight=10 keeps UA >= 95 (97.0 [92.0, 102.0]) with the best IRA, 60.0 [55.0, 65.0]")
    assert "overlaps" not in verdict and verdict.endswith("(1 of 4 settings have no finished run)")


def test_none_keeps_ua_at_95():
    rows = sweep_rows(settings([1, 10]), [result("l2@weight=1", 3, 94.9, 80, 80), result("l2@weight=10", 3, 60, 95, 95)])
    assert best_setting(rows) is None and not any(r["best"] for r in rows)
    assert sweep_verdicts(rows)["l2"] == "no setting keeps UA >= 95 (highest UA: 94.9 [89.9, 99.9] at weight=1)"


def test_ties_go_to_cra_then_order_and_overlapping_intervals_are_named():
    rows = [result("a", 3, 95, 60, 50), result("b", 3, 100, 60, 70), result("c", 3, 99, 60, 70), result("d", 3, 99, 40, 90, half=1)]
    assert best_setting(rows)["run"] == "b"
    built = sweep_rows([("s", r, {"--x.y": i}) for i, r in enumerate("abcd")], rows)
    assert [r["best"] for r in built] == [False, True, False, False]
    assert sweep_verdicts(built)["s"].endswith("its IRA interval overlaps that of y=0, y=2: the data do not tell them apart")
    assert best_setting([result("e", 3, NAN, 99, 99)]) is None


def test_labels():
    assert option_label("--stream.merge.lambda_") == "lambda" and option_label("--trainer.callbacks.init_args.top_k") == "top_k"
    assert setting_text({"--stream.merge.lambda_": 2, "--stream.merge.top_k": 0.2, "--a.flag": True}) == "lambda=2, top_k=0.2, flag=true"
