"""``train.py score WEIGHTS``: a tiny-world denoiser's validation grid under several noise seeds.

A card's ``sample_accuracy`` is one 192-image grid (one image a prompt, the recipe's sampler,
guidance and noise seed): a standard error of up to 3.6 points. This command samples the same
grid under other noise seeds with the same recipe code, scores each with the shipped classifier,
and pools them: per seed and pooled style / object accuracy with Wilson 95% intervals, and each
object's hits (where a model's misses are). It takes a UNet or a DiT of any depth, read from
safetensors only. The 12-block DiT's card figure (91.0% over three grids) is its output.

    python train.py score lightning_unlearn/weights/tiny_dit_12.safetensors --seeds 1234 99 7
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_unlearn.atomic_io import load_weights, write_json
from lightning_unlearn.checks import ArgumentParser
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.intervals import wilson
from lightning_unlearn.pretraining.tiny_dit import BLOCK_KEY, TinyDiTPretraining
from lightning_unlearn.pretraining.tiny_unet import TinyUNetPretraining
from lightning_unlearn.tinyworld.classifier import TinyWorldClassifier
from lightning_unlearn.tinyworld.concepts import OBJECTS


def recipe_for(path: str | Path, eval_steps: int, eval_guidance: float) -> TinyUNetPretraining:
    """The recipe whose grid the weights at ``path`` are scored on (DiT with as many blocks as
    they hold, else UNet), holding those weights; a named error when they fit neither."""
    state = load_weights(path)
    layers = 1 + max((int(m.group(1)) for key in state if (m := BLOCK_KEY.match(key))), default=-1)
    settings = dict(eval_steps=eval_steps, eval_guidance=eval_guidance)
    recipe = TinyDiTPretraining(num_layers=layers, **settings) if layers else TinyUNetPretraining(**settings)
    missing, unexpected = recipe.unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        kind = f"{layers}-block DiT" if layers else "UNet"
        raise SettingsError(
            f"{path} is not a tiny-world {kind}'s weights: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    return recipe.eval()


def score_seed(recipe: TinyUNetPretraining, classifier: TinyWorldClassifier, seed: int) -> dict[str, Any]:
    """One grid: the recipe's validation sampling with noise seed ``seed``, classified."""
    recipe.hparams.eval_seed = seed
    images, styles, objects = recipe.sample_grid(recipe.unet)
    with torch.no_grad():
        style_logits, object_logits = classifier(images)
    style_hits = style_logits.argmax(1) == styles
    object_hits = object_logits.argmax(1) == objects
    return {
        "seed": seed,
        "images": len(styles),
        "style_correct": int(style_hits.sum()),
        "object_correct": int(object_hits.sum()),
        "per_object": {name: int(object_hits[objects == i].sum()) for i, name in enumerate(OBJECTS)},
    }


def pooled(grids: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The grids' counts summed, with accuracies and Wilson 95% intervals in percent."""
    images = sum(g["images"] for g in grids)
    total = {"seeds": [g["seed"] for g in grids], "images": images}
    for kind in ("style", "object"):
        hits = sum(g[f"{kind}_correct"] for g in grids)
        total[f"{kind}_correct"] = hits
        total[f"{kind}_acc"] = round(100.0 * hits / images, 2)
        total[f"{kind}_wilson95"] = [round(bound, 2) for bound in wilson(hits, images)]
    total["per_object"] = {name: sum(g["per_object"][name] for g in grids) for name in OBJECTS}
    return total


def main(argv: list[str]) -> None:
    """``train.py score WEIGHTS [--seeds ...] [--steps N] [--guidance G] [--out FILE]``."""
    parser = ArgumentParser(
        prog="train.py score",
        description="Sample a tiny-world UNet's or DiT's validation grid (192 prompts, one image each, the "
                    "pretraining recipe's sampler) under each noise seed, classify it with the shipped "
                    "classifier, and print per-seed and pooled style / object accuracy with Wilson 95% "
                    "intervals and each object's hits. Minutes a grid on 2 CPU cores (about 5 for the "
                    "12-block DiT).",
    )
    parser.add_argument("weights", help="the denoiser's .safetensors (an export's EMA weights, or a shipped file)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234],
                        help="noise seeds, one grid each (the cards' validation grid is seed 1234)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (the cards': 20)")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance (the cards': 4)")
    parser.add_argument("--out", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise SettingsError(f"--seeds repeats a seed ({args.seeds}): a repeated grid is the same images twice")
    if args.steps < 1:
        raise SettingsError(f"--steps must be at least 1, got {args.steps}")
    if args.out and Path(args.out).exists():
        raise SettingsError(f"--out {args.out} exists; choose another file")
    recipe = recipe_for(args.weights, args.steps, args.guidance)
    classifier = TinyWorldClassifier.load()
    grids = []
    for seed in args.seeds:
        grid = score_seed(recipe, classifier, seed)
        grids.append(grid)
        print(f"seed {seed}: style {grid['style_correct']}/{grid['images']}, object {grid['object_correct']}/{grid['images']}",
              flush=True)
    total = pooled(grids)
    print(f"pooled over {len(grids)} grids ({total['images']} images): "
          f"style {total['style_acc']}% {total['style_wilson95']}, object {total['object_acc']}% {total['object_wilson95']}")
    print("object hits: " + ", ".join(f"{name} {hits}/{total['images'] // len(OBJECTS)}"
                                      for name, hits in total["per_object"].items()))
    if args.out:
        write_json({"weights": str(args.weights), "steps": args.steps, "guidance": args.guidance,
                    "grids": grids, "pooled": total}, args.out)
