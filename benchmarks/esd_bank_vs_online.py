"""ESD x_t source: one request served with the trajectory bank vs online, through the stream runner.

    python benchmarks/esd_bank_vs_online.py [--repeats 3] [--request Abstractionism]
    python benchmarks/esd_bank_vs_online.py --quick        # smoke run

Runs ``configs/tinyworld/esd_styles_sequential.yaml`` with one request (the same seed every
time) into fresh run folders, ``--model.method.init_args.xt_source`` = ``bank`` and ``online``
alternating ``--repeats`` times, and reads ``results.json``: the request's ``train_seconds``
(begin_request, i.e. the bank build, + all optimizer steps) and its UA / IRA / CRA after the
request. The ratio is online / bank of the medians. Everything else is the config's (100 steps
of batch 16, 25 DDIM steps, guidance 3, 64 bank trajectories, the evaluation settings).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import QUICK_OBJECTS, QUICK_STYLES, REPO, machine_line, median, parser, quiet_lightning, setup_torch, table

SOURCES = ("bank", "online")


def stream_args(run_dir: Path, cache_dir: Path, source: str, request: str, quick: bool) -> list[str]:
    args = [
        "unlearn", "--config", str(REPO / "configs/tinyworld/esd_styles_sequential.yaml"),
        f"--data.requests=[{request}]", f"--stream.run_dir={run_dir}",
        f"--model.method.init_args.xt_source={source}", "--trainer.logger=false",
        "--stream.semantic_analysis=false", f"--stream.evaluation.cache_dir={cache_dir}",
    ]
    if quick:
        args += [
            "--data.steps_per_request=3", "--data.batch_size=2", "--model.method.init_args.ddim_steps=4",
            "--model.method.init_args.bank_trajectories=2", "--stream.evaluation.steps=3",
            f"--data.styles=[{', '.join(QUICK_STYLES)}]", f"--data.objects=[{', '.join(QUICK_OBJECTS)}]",
        ]
    return args


def main() -> None:
    p = parser(__doc__, repeats=3)
    p.add_argument("--request", default="Abstractionism", help="the style to erase (default %(default)s)")
    args = p.parse_args()
    setup_torch(args.threads)
    quiet_lightning()
    repeats = 1 if args.quick else args.repeats
    request = "Van Gogh" if args.quick else args.request

    from lightning_unlearn.cli import main as cli_main
    from lightning_unlearn.run_folder import RunFolder

    print(machine_line())
    rows: dict[str, list[dict]] = {s: [] for s in SOURCES}
    with tempfile.TemporaryDirectory(prefix="esd_bank_vs_online_") as root:
        for rep in range(repeats):
            for source in SOURCES:
                run_dir = Path(root) / f"{source}-{rep}"
                cli_main(stream_args(run_dir, Path(root) / "eval_cache", source, request, args.quick))
                result = RunFolder(run_dir).read_results()
                rows[source].append(result[-1])
    print(f"\nESD request {request!r}, {repeats} run(s) per source, alternating; medians\n")
    out = []
    for source in SOURCES:
        r = rows[source]
        out.append([source, median([x["train_seconds"] for x in r]), median([x["UA"] for x in r]),
                    median([x["IRA"] for x in r]), median([x["CRA"] for x in r]), median([x["eval_seconds"] for x in r])])
    bank_s, online_s = out[0][1], out[1][1]
    print(table(["x_t source", "request train s", "UA", "IRA", "CRA", "evaluation s"], out))
    print(f"\nonline / bank train time: {online_s / bank_s:.2f}x; "
          f"|UA, IRA, CRA difference|: {', '.join(f'{abs(out[0][i] - out[1][i]):.1f}' for i in (2, 3, 4))} points")


if __name__ == "__main__":
    main()
