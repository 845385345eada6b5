"""Images per prompt (``--stream.evaluation.seeds_per_prompt``): what an evaluation costs and how
wide its IRA interval is.

    python benchmarks/evaluation_seeds.py [--seeds 1,3] [--repeats 3]
    python benchmarks/evaluation_seeds.py --quick        # smoke run (4 x 3 corner, 1 repetition)

On the tiny world's shipped base UNet, with the shipped tiny-world evaluation (DPM-Solver++ 8
steps, guidance 4), each setting samples and scores the whole evaluation set; the settings
alternate ``--repeats`` times and the median wall and CPU seconds are reported (on a loaded
machine the CPU seconds' ratio is the steadier one). The half-widths are the 95%
intervals of the base model's IRA (a style stream: style accuracy on every image) and of the IRA
after the default 12-request style stream on 4 retained styles (48 images a seed), the latter at
that setting's image count and an IRA of 90% (Wilson; docs/statistics.md). Seconds depend on the
machine and its load; the half-widths do not.
"""

from __future__ import annotations

import time

from _common import QUICK_OBJECTS, QUICK_STYLES, machine_line, median, parser, setup_torch, table


def main() -> None:
    p = parser(__doc__, repeats=3)
    p.add_argument("--seeds", default="1,3", help="comma-separated seeds_per_prompt; the first is the baseline")
    args = p.parse_args()
    setup_torch(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    repeats = 1 if args.quick else args.repeats

    from lightning_unlearn.evaluation import EvaluationSettings, Evaluator, VocabularySubset, score
    from lightning_unlearn.evaluation_cache import evaluate_counts
    from lightning_unlearn.intervals import half_width, wilson
    from lightning_unlearn.requests import ConceptVocabulary
    from lightning_unlearn.tinyworld.classifier import TinyWorldClassifier
    from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES, tiny_vocabulary
    from lightning_unlearn.unlearning_module import UnlearningModule

    module = UnlearningModule()
    vocabulary = ConceptVocabulary(styles=QUICK_STYLES, objects=QUICK_OBJECTS) if args.quick else tiny_vocabulary()
    classifier = VocabularySubset(TinyWorldClassifier.load(), list(STYLES), list(OBJECTS), vocabulary)
    evaluators = {k: Evaluator(module.backbone, classifier, vocabulary,
                               EvaluationSettings(seeds_per_prompt=k, sampler="dpm++", steps=3 if args.quick else 8))
                  for k in seeds}
    print(machine_line())
    print(f"{len(vocabulary.styles)} x {len(vocabulary.objects)} prompts, {repeats} repetition(s), settings alternating\n")

    seconds: dict[int, list[float]] = {k: [] for k in seeds}
    cpu: dict[int, list[float]] = {k: [] for k in seeds}
    metrics: dict[int, dict] = {}
    for _ in range(repeats):
        for k, evaluator in evaluators.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            outcome = evaluate_counts(evaluator, module.unet)
            seconds[k].append(time.perf_counter() - started)
            # CPU seconds of this process: what a loaded machine changes least.
            cpu[k].append(time.process_time() - cpu_started)
            metrics[k] = score(outcome.counts, vocabulary, [], {"style"})

    first = median(seconds[seeds[0]])
    late_images = 4 * len(vocabulary.objects)  # 4 retained styles after the 12-request style stream
    rows = []
    for k in seeds:
        m = metrics[k]
        rows.append([k, len(evaluators[k].captions), median(seconds[k]), median(seconds[k]) / first,
                     median(cpu[k]), median(cpu[k]) / median(cpu[seeds[0]]),
                     f"{m['IRA']:.2f} [{m['IRA_lo']:.2f}, {m['IRA_hi']:.2f}]", half_width((m["IRA_lo"], m["IRA_hi"])),
                     k * late_images, half_width(wilson(0.9 * k * late_images, k * late_images))])
    print(table(["seeds_per_prompt", "images", "evaluation s (median)", "cost vs first row", "CPU s (median)",
                 "CPU cost vs first row", "base IRA [95%]",
                 "base IRA half-width", "late-stream images", "late-stream half-width at IRA 90%"], rows))


if __name__ == "__main__":
    main()
