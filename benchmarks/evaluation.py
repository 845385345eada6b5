"""Evaluation cost: images per second and the whole evaluation's time, per solver, and what
reusing the base evaluation saves a stream.

    python benchmarks/evaluation.py [--solvers ddim:20,dpm++:10,dpm++:8] [--repeats 3] [--requests 12]
    python benchmarks/evaluation.py --quick        # smoke run (12 images, 1 repetition)

On the tiny world's shipped base UNet, each solver samples the full evaluation set (every style
x object prompt, the evaluation's fixed noise, guidance 4) and the classifier scores it; the
solvers alternate ``--repeats`` times and the medians are reported with the base model's style
and object accuracy (identical across repetitions: sampling is deterministic). The first solver
is "before". A stream of ``--requests`` requests evaluates ``requests + 1`` times: before =
every evaluation sampled with the first solver; after = the base evaluation read from the cache
(key computation + load, timed) and the others sampled with the solver of that row.
"""

from __future__ import annotations

import tempfile
import time

from _common import QUICK_OBJECTS, QUICK_STYLES, machine_line, median, parser, setup_torch, table


def parse_solvers(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        if name not in ("ddim", "dpm++") or not steps.isdigit():
            raise SystemExit(f"--solvers: expected entries like ddim:20 or dpm++:10, got {item!r}")
        out.append((name, int(steps)))
    return out


def main() -> None:
    p = parser(__doc__, repeats=3)
    p.add_argument("--solvers", default="ddim:20,dpm++:12,dpm++:10,dpm++:8",
                   help="comma-separated solver:steps; the first is the baseline (default %(default)s)")
    p.add_argument("--requests", type=int, default=12, help="requests of the stream the totals are for")
    p.add_argument("--batch-size", type=int, default=96, help="prompts sampled together (the default setting)")
    args = p.parse_args()
    setup_torch(args.threads)
    solvers = parse_solvers("ddim:4,dpm++:3" if args.quick else args.solvers)
    repeats = 1 if args.quick else args.repeats

    from dataclasses import replace

    from lightning_unlearn.evaluation import EvaluationSettings, Evaluator, VocabularySubset, score
    from lightning_unlearn.evaluation_cache import EvaluationCache, base_evaluation_recipe, evaluate_counts, recipe_key
    from lightning_unlearn.requests import ConceptVocabulary
    from lightning_unlearn.tinyworld.classifier import TinyWorldClassifier
    from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES, tiny_vocabulary
    from lightning_unlearn.unlearning_module import UnlearningModule

    module = UnlearningModule()
    vocabulary = ConceptVocabulary(styles=QUICK_STYLES, objects=QUICK_OBJECTS) if args.quick else tiny_vocabulary()
    classifier = VocabularySubset(TinyWorldClassifier.load(), list(STYLES), list(OBJECTS), vocabulary)
    base_settings = EvaluationSettings(guidance=4.0, batch_size=args.batch_size)
    evaluators = {
        s: Evaluator(module.backbone, classifier, vocabulary, replace(base_settings, sampler=s[0], steps=s[1]))
        for s in solvers
    }
    images = len(next(iter(evaluators.values())).captions)
    print(machine_line())
    print(f"evaluating {images} images per solver, {repeats} repetition(s), solvers alternating\n")

    seconds: dict[tuple[str, int], list[float]] = {s: [] for s in solvers}
    accuracy: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(repeats):
        for s, evaluator in evaluators.items():
            started = time.perf_counter()
            outcome = evaluate_counts(evaluator, module.unet)
            seconds[s].append(time.perf_counter() - started)
            metrics = score(outcome.counts, vocabulary, [], {"style"})
            accuracy[s] = (metrics["style_acc"], metrics["object_acc"])

    # The reused base evaluation: fingerprint everything, then read the entry back.
    reuse: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        cache = EvaluationCache(folder)
        evaluator = evaluators[solvers[-1]]
        recipe = base_evaluation_recipe(module, evaluator, "32-true", "cpu")
        evaluate_counts(evaluator, module.unet, cache=cache, key=recipe_key(recipe), recipe=recipe)
        for _ in range(max(3, repeats)):
            started = time.perf_counter()
            key = recipe_key(base_evaluation_recipe(module, evaluator, "32-true", "cpu"))
            assert cache.load(key) is not None
            reuse.append(time.perf_counter() - started)
    reuse_s = median(reuse)

    evaluations = args.requests + 1
    before = evaluations * median(seconds[solvers[0]])
    rows = []
    for s in solvers:
        t = median(seconds[s])
        after = args.requests * t + reuse_s
        rows.append([s[0], s[1], images, t, images / t, accuracy[s][0], accuracy[s][1],
                     evaluations * t, after, before / after])
    print(table(
        ["solver", "steps", "images", "evaluation s (median)", "images/s", "style %", "object %",
         f"stream: {evaluations} evaluations s", "with base reused s", "speed-up vs first row, no reuse"],
        rows,
    ))
    print(f"\nbase evaluation reused from the cache: {reuse_s:.3f} s median (fingerprint + load), "
          f"instead of sampling it ({median(seconds[solvers[0]]):.2f} s with {solvers[0][0]} {solvers[0][1]})")


if __name__ == "__main__":
    main()
