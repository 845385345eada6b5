"""One request at the shipped defaults erases its style and keeps everything else (about 1 min)."""

import json

from lightning_unlearn.cli import main


def test_default_esd_request_erases_van_gogh_and_retains_the_rest(tmp_path):
    run = tmp_path / "run"
    main(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml",
          "--data.requests=[Van Gogh]", f"--stream.run_dir={run}"])
    base, after = json.loads((run / "results.json").read_text())
    assert base["IRA"] >= 90 and base["CRA"] >= 90  # the base model knows its world
    assert after["UA_latest"] >= 90  # Van Gogh is gone...
    assert after["IRA"] >= 90  # ...the other 15 styles stay...
    assert after["CRA"] >= base["CRA"] - 5  # ...and so do the objects
    per_style = json.loads((run / "requests" / "01-van-gogh" / "metrics.json").read_text())["per_style"]
    assert per_style["Van Gogh"] <= 10 and per_style["Monet"] >= 90
