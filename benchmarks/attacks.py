"""Attack cost: the default attack set's time as a ratio to one request's (train + evaluation).

    python benchmarks/attacks.py [--requests "[Van Gogh]"] [--threads 2]
    python benchmarks/attacks.py --quick        # smoke run (tiny sizes; numbers mean nothing)

One tiny-world stream of the shipped ESD style config (100 steps per request, the full 16 x 12
evaluation grid at 8 DPM++ steps) with ``--stream.attacks.names=[relearn, embedding, prompt]``
at their default budgets, measured in one run: every request row of ``results.json`` gives its
training seconds, evaluation seconds and attack seconds (sampling the attacker's base-model
images of the concept included). The issue's target: attacks add at most ~30% to a request.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from _common import QUICK_OBJECTS, QUICK_STYLES, machine_line, parser, setup_torch, table

DEFAULT_ATTACKS = "[relearn, embedding, prompt]"


def main() -> None:
    p = parser(__doc__, repeats=1)
    p.add_argument("--requests", default="[Van Gogh]", help="the stream's requests (default %(default)s)")
    args = p.parse_args()
    setup_torch(args.threads)
    from lightning_unlearn.cli import main as cli

    where = machine_line()

    extra = ["--trainer.logger=false", "--stream.progress=false", "--stream.semantic_analysis=false",
             "--stream.evaluation.reuse_base=false"]
    if args.quick:
        extra += ["--data.steps_per_request=2", "--data.batch_size=2", "--model.method.init_args.ddim_steps=3",
                  "--model.method.init_args.bank_trajectories=2", "--stream.evaluation.steps=3",
                  f"--data.styles=[{', '.join(QUICK_STYLES)}]", f"--data.objects=[{', '.join(QUICK_OBJECTS)}]",
                  "--stream.attacks.images=2", "--stream.attacks.relearn.budgets=[1, 2]",
                  "--stream.attacks.embedding.steps=1", "--stream.attacks.prompt.iterations=1"]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cli(["unlearn", "--config", "configs/tinyworld/esd_styles_sequential.yaml", f"--data.requests={args.requests}",
             f"--stream.run_dir={run}", f"--stream.attacks.names={DEFAULT_ATTACKS}", *extra])
        rows = json.loads((run / "results.json").read_text())[1:]
        settings = json.loads((run / "stream_settings.json").read_text())["attacks"]
    print(where)
    print(f"\nattacks {settings['names']}: relearn budgets {settings['relearn']['budgets']}, embedding "
          f"{settings['embedding']['steps']} steps x {settings['embedding']['tokens']} tokens, prompt "
          f"{settings['prompt']['iterations']} iterations x {settings['prompt']['candidates']} candidates x "
          f"{settings['prompt']['tokens']} tokens, {settings['images']} attacker images\n")
    out = []
    for row in rows:
        request = row["train_seconds"] + row["eval_seconds"]
        out.append([row["concept"], row["train_seconds"], row["eval_seconds"], row["attack_seconds"],
                    row["attack_seconds"] / request, 1 + row["attack_seconds"] / request,
                    row["relearn_asr"], row["embedding_asr"], row["prompt_asr"], row["attack_images"]])
    print(table(["request", "train s", "eval s", "attacks s", "attacks / request", "request time with attacks (x)",
                 "relearn ASR %", "embedding ASR %", "prompt ASR %", "images"], out))


if __name__ == "__main__":
    main()
