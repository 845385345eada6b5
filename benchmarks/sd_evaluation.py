"""Evaluation at Stable Diffusion 1.5 size: images/s, peak memory and MFU for fp32 / bf16 / bf16 + compile.

    python benchmarks/sd_evaluation.py                              # CPU: reduced size
    python benchmarks/sd_evaluation.py --device cuda                # GPU: SD 1.5's shapes, 1000 images
    python benchmarks/sd_evaluation.py --quick                      # smoke run; numbers mean nothing

Builds an SD-1.5-shaped pipeline with random weights (``sd_scale.build_pipeline_folder``: the UNet
and CLIP text encoder of SD 1.5's configs, and SD 1.5's VAE config; nothing downloads) and a tiny
random CLIP folder as the classifier, and runs the project's own evaluation on it:
``Evaluator.evaluate`` (DPM-Solver++ 2M, ``--steps`` steps, classifier-free guidance 7.5 with the
conditional and unconditional halves in one UNet call, ``--batch`` prompts at a time, VAE decode,
CLIP zero-shot scoring) over ``--images`` prompts, under each setting:

- ``fp32``: eager, float32;
- ``bf16``: eager under bf16 autocast (what ``--trainer.precision=bf16-mixed`` samples under);
- ``bf16 + compile``: ``--model.compile=default`` (inductor);
- ``bf16 + compile + channels-last`` / ``bf16 + CUDA graphs + channels-last``: ``--model.compile=reduce-overhead``.

Each setting runs in its own process, so peak memory is its own: CUDA ``max_memory_allocated``; on
the CPU the process's peak RSS. One warm-up batch (compilation, allocator) precedes the timed
evaluation of all images. The classifier is tiny (its cost is not a real CLIP-L/14's, about 80
GFLOP per image, under 1 % of the UNet's 20 guided steps).

FLOPs and MFU: the fp32 process counts one guided UNet call at the benchmark's batch with
``torch.utils.flop_counter.FlopCounterMode``; an image costs ``steps`` such calls / batch. MFU =
UNet FLOPs per second achieved / the device's dense bf16 peak (``--peak-tflops``, or known by the
CUDA device's name), the same yardstick for every row; the VAE and classifier are outside the count.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from _common import machine_line, measure_in_own_process, quiet_lightning, table  # repository on sys.path
from sd_scale import add_shared_arguments, count_flops, peak_tflops, pipeline_root, write_char_tokenizer

SETTINGS: dict[str, dict] = {
    "fp32": dict(bf16=False),
    "bf16": dict(bf16=True),
    "bf16 + compile": dict(bf16=True, compile="default"),
    "bf16 + compile + channels-last": dict(bf16=True, compile="default", channels_last=True),
    "bf16 + CUDA graphs + channels-last": dict(bf16=True, compile="reduce-overhead", channels_last=True),
}
DEFAULT_SETTINGS = ["fp32", "bf16", "bf16 + compile"]
GUIDANCE = 7.5


def build_clip_folder(out: Path) -> None:
    """A tiny random CLIP model + character tokenizer (the classifier's cost is negligible here)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    write_char_tokenizer(out)
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=32)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=16),
        projection_dim=16,
    )).save_pretrained(out)


def vocabulary_of(images: int):
    """A vocabulary whose style x object grid has ``images`` prompts (styles x 10 objects)."""
    from lightning_unlearn.requests import ConceptVocabulary

    objects = min(10, images)
    if images % objects:
        raise SystemExit(f"--images must be a multiple of 10 (or below 10), got {images}")
    return ConceptVocabulary(styles=[f"style{i}" for i in range(images // objects)],
                             objects=[f"object{j}" for j in range(objects)])


def measure(setting: str, folder: Path, clip: Path, args) -> dict:
    """Evaluate ``args.images`` prompts under ``setting`` in this process; returns its figures."""
    import resource
    from contextlib import nullcontext

    import torch

    from lightning_unlearn.evaluation import ClipZeroShotClassifier, EvaluationSettings, Evaluator
    from lightning_unlearn.sampling import TextCondition, noise_pair
    from lightning_unlearn.unlearning_module import UnlearningModule

    quiet_lightning()
    cfg = SETTINGS[setting]
    cuda = args.device.startswith("cuda")
    device = torch.device(args.device)
    module = UnlearningModule(pretrained=str(folder), compile=cfg.get("compile", "off"),
                              channels_last=cfg.get("channels_last", False)).to(device)
    vocabulary = vocabulary_of(args.images)
    evaluator = Evaluator(module.backbone, ClipZeroShotClassifier(clip, vocabulary).to(device), vocabulary,
                          EvaluationSettings(sampler="dpm++", steps=args.steps, guidance=GUIDANCE,
                                             batch_size=args.batch))
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg["bf16"] else nullcontext())

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    unet = module.unet.eval()
    flops = None
    if setting == "fp32":  # eager: one guided UNet call at the benchmark's batch (the same in every setting)
        backbone = module.backbone
        latents = torch.randn((args.batch, *backbone.latent_shape), device=device)
        cond = TextCondition.from_captions(backbone, evaluator.captions[: args.batch])
        uncond = TextCondition.from_captions(backbone, [""])
        with torch.no_grad():
            flops = count_flops(lambda: noise_pair(unet, latents, torch.tensor(500, device=device), cond, uncond))
    with autocast:  # warm-up: one batch (compilation for the compiled settings)
        started = time.perf_counter()
        evaluator.evaluate(unet, torch.arange(args.batch), grid=False)
        sync()
        warmup = time.perf_counter() - started
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with autocast:
        started = time.perf_counter()
        counts, _ = evaluator.evaluate(unet, grid=False)
        sync()
        seconds = time.perf_counter() - started
    assert int(counts["count"].sum()) == args.images
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"setting": setting, "seconds": seconds, "warmup_s": warmup, "peak_gib": peak / 2**30, "call_flops": flops,
            "unet_params": sum(p.numel() for p in unet.parameters())}


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["full", "reduced"], default=None,
                   help="model size (default: full on CUDA, reduced on CPU; see sd_scale.py)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--images", type=int, default=None, help="prompts evaluated (default 1000 GPU, 20 CPU)")
    p.add_argument("--batch", type=int, default=None, help="prompts per batch (default 50 GPU, 10 CPU)")
    p.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps (default 20)")
    p.add_argument("--quick", action="store_true", help="smoke run: reduced size, 4 images, 2 steps; numbers mean nothing")
    add_shared_arguments(p, SETTINGS, DEFAULT_SETTINGS)
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    if args.quick:
        args.size, args.images, args.batch, args.steps = "reduced", 4, 2, 2
    args.size = args.size or ("full" if gpu else "reduced")
    args.images = args.images or (1000 if gpu else 20)
    args.batch = args.batch or (50 if gpu else 10)
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")
    vocabulary_of(args.images)  # refuses a count the grid cannot hold, before any work
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args._measure:  # child process: one setting
        folder = Path(args._folder)
        print("RESULT " + json.dumps(measure(args._measure, folder / "pipeline", folder / "clip", args)), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="sd_evaluation_") as tmp:
        root = pipeline_root(args.folder, args.size, tmp)
        if not (root / "clip" / "config.json").is_file():
            build_clip_folder(root / "clip")
        results = []
        child = ["--_folder", str(root), "--size", args.size, "--device", args.device, "--images", str(args.images),
                 "--batch", str(args.batch), "--steps", str(args.steps)]
        child += ["--threads", str(args.threads)] if args.threads else []
        for setting in args.settings:
            results.append(measure_in_own_process(__file__, setting, child))

    import torch

    base = results[0]
    where = torch.cuda.get_device_name(args.device) if gpu else f"CPU ({os.cpu_count()} cores)"
    call_flops = next((r["call_flops"] for r in results if r["call_flops"]), None)
    image_flops = call_flops * args.steps / args.batch if call_flops else None
    peak = peak_tflops(where, args.peak_tflops)
    memory = "CUDA max_memory_allocated" if gpu else "peak RSS of the process"
    print(f"{machine_line()}\ndevice: {where}; size {args.size}: UNet {base['unet_params'] / 1e6:.1f} M parameters; "
          f"{args.images} images, DPM-Solver++ {args.steps} steps, CFG {GUIDANCE}, batch {args.batch} "
          f"(x2 in each UNet call); memory = {memory}\n")
    rows = []
    for r in results:
        per_second = args.images / r["seconds"]
        achieved = image_flops * per_second / 1e12 if image_flops else float("nan")
        rows.append([r["setting"], r["seconds"], per_second, 1000 / per_second, r["warmup_s"], r["peak_gib"],
                     r["seconds"] / base["seconds"], achieved, 100 * achieved / peak if peak else float("nan")])
    print(table(["setting", f"{args.images} images (s)", "images/s", "1000 images (s)", "warm-up batch (s)",
                 "peak memory (GiB)", "time / first", "UNet TFLOP/s", "MFU %"], rows))
    if image_flops:
        print(f"\nUNet FLOPs per image: {image_flops / 1e12:.3f} TFLOP ({args.steps} guided calls, counted with "
              f"FlopCounterMode); MFU against {f'{peak:.0f} TFLOP/s (dense bf16)' if peak else 'no known peak'}")


if __name__ == "__main__":
    main()
