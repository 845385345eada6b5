"""The default 12-request tiny-world stream end to end: total time, evaluation included.

    python benchmarks/stream.py [--repeats 1] [--config configs/tinyworld/esd_styles_sequential.yaml] [-- EXTRA CLI ARGS]
    python benchmarks/stream.py --quick        # smoke run (2 requests, tiny sizes)

Runs the config into a fresh temporary run folder (``--repeats`` times) with exactly the CLI a
user runs, and prints the wall time of the whole command and the sums of the runner's
``train_seconds`` and ``eval_seconds`` columns, with the last request's UA / IRA / CRA. The
base evaluation cache is a fresh folder per run unless ``--reuse-cache`` (then the second and
later runs read the base evaluation back, as any later study on the same base does).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from _common import QUICK_OBJECTS, QUICK_STYLES, REPO, machine_line, median, parser, quiet_lightning, setup_torch, table


def main() -> None:
    p = parser(__doc__, repeats=1)
    p.add_argument("--config", default=str(REPO / "configs/tinyworld/esd_styles_sequential.yaml"))
    p.add_argument("--reuse-cache", action="store_true", help="share one base evaluation cache across the runs")
    p.add_argument("extra", nargs="*", help="more CLI arguments for every run (after --)")
    args = p.parse_args()
    setup_torch(args.threads)
    quiet_lightning()
    repeats = 1 if args.quick else args.repeats

    from lightning_unlearn.cli import main as cli_main
    from lightning_unlearn.run_folder import RunFolder

    print(machine_line())
    rows = []
    with tempfile.TemporaryDirectory(prefix="stream_benchmark_") as root:
        for rep in range(repeats):
            run_dir = Path(root) / f"run-{rep}"
            cache = Path(root) / ("eval_cache" if args.reuse_cache else f"eval_cache-{rep}")
            cli = ["unlearn", "--config", args.config, f"--stream.run_dir={run_dir}", "--trainer.logger=false",
                   f"--stream.evaluation.cache_dir={cache}", *args.extra]
            if args.quick:
                cli += [
                    "--data.requests=[Van Gogh, Cartoon]", "--data.steps_per_request=3", "--data.batch_size=2",
                    "--model.method.init_args.ddim_steps=4", "--model.method.init_args.bank_trajectories=2",
                    "--stream.evaluation.steps=3", "--stream.semantic_analysis=false",
                    f"--data.styles=[{', '.join(QUICK_STYLES)}]", f"--data.objects=[{', '.join(QUICK_OBJECTS)}]",
                ]
            started = time.perf_counter()
            cli_main(cli)
            total = time.perf_counter() - started
            results = RunFolder(run_dir).read_results()
            settings = json.loads((run_dir / "stream_settings.json").read_text())["evaluation"]
            last = results[-1]
            rows.append([rep + 1, len(results) - 1, f"{settings['sampler']} {settings['steps']}", total / 60,
                         sum(r["train_seconds"] for r in results) / 60, sum(r["eval_seconds"] for r in results) / 60,
                         results[0]["eval_seconds"], last["UA"], last["IRA"], last["CRA"]])
    print()
    print(table(["run", "requests", "evaluation", "total min", "train min", "evaluation min", "base evaluation s",
                 "UA", "IRA", "CRA"], rows))
    if repeats > 1:
        print(f"\nmedian total: {median([r[3] for r in rows]):.2f} min")


if __name__ == "__main__":
    main()
