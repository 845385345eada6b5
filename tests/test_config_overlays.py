"""Configs compose: every tiny-world study run is one base config per stream plus overlays
(configs/protocols/ with a second --config, configs/{,tinyworld/}callbacks/ with
--trainer.callbacks+=). Each run is resolved by the real ``train.py unlearn`` parser, not run, and
must be its base plus exactly what its name says: the table below pins the callbacks and their
weights that the per-regularizer configs used to spell out in full."""

from pathlib import Path

import pytest

import lightning_unlearn.stream as stream
from lightning_unlearn.study import Study

# Run name -> the callbacks after the base's DriftRecorder, as (class, the init_args that matter).
# The ESD anchors carry ESD-scaled weights, the CA ones CA-scaled (see the overlay files).
PROJECTION_GRADIENT = ("GradientProjection",
                       {"mode": "gradient", "similarity_threshold": 0.3, "protect_unlearned": True})
PROJECTION_UPDATE = ("GradientProjection", {"mode": "update", "similarity_threshold": 0.3, "protect_unlearned": True})
TOPK = ("SelectiveFineTuning", {"top_k": 0.05, "importance_batches": 8})


def anchor(kind, weight):
    return "AnchorRegularizer", {"kind": kind, "weight": weight, "reference": "previous"}


CALLBACKS = {
    "sequential": [], "simultaneous": [], "independent_ties": [],
    "l1": [anchor("l1", 0.016)], "l2": [anchor("l2", 1.6)], "topk": [TOPK],
    "projection_gradient": [PROJECTION_GRADIENT], "projection_update": [PROJECTION_UPDATE],
    "projection_topk": [PROJECTION_UPDATE, TOPK],  # top-k last: its frozen elements stay exact
    "projection_l1": [anchor("l1", 0.016), PROJECTION_UPDATE],
    "ca_sequential": [],
    "ca_l1": [anchor("l1", 1.41)], "ca_l2": [anchor("l2", 705.0)], "ca_topk": [TOPK],
    "ca_projection_gradient": [PROJECTION_GRADIENT], "ca_projection_update": [PROJECTION_UPDATE],
    "ca_projection_topk": [PROJECTION_UPDATE, TOPK],
    "ca_independent_ties": [], "ca_simultaneous": [],
    "inverse_ewc": [("InverseEWC", {"kind": "l2", "weight": 1.6, "decay": 0.7})],
    "trajectory": [("TrajectoryRegularizer", {"kind": "l2", "weight": 1.6, "decay": 0.7})],
    "replay": [("Replay", {"weight": 1.0, "batch": 2})],
    "uce": [], "lora_esd": [], "lora_ca": [],
}
RUN_BASES = {"uce": "uce", "lora_esd": "esd", "lora_ca": "ca"}
"""Runs whose base config is not read off a ``ca_`` prefix (default: ESD)."""
LORA_RUNS = {"lora_esd", "lora_ca"}
"""Runs with configs/trainable/lora.yaml: the trainable set and its adapter change, nothing else."""
SEQUENTIAL = {"protocol": "sequential", "merge": None, "simultaneous": {"check_every_n_steps": 50, "max_steps": 1000}}
PROTOCOLS = {
    "simultaneous": {"protocol": "simultaneous", "merge": None,
                     "simultaneous": {"check_every_n_steps": 50, "max_steps": 300}},
    "independent_ties": {"protocol": "independent", "merge": {"method": "ties", "lambda_": 2.0, "top_k": 0.2, "trim_scope": "global"},
                         "simultaneous": {"check_every_n_steps": 50, "max_steps": 1000}},
}
METHODS = {"esd": ("lightning_unlearn.methods.ESD", "esd-x"),
           "ca": ("lightning_unlearn.methods.ConceptAblation", "kv-xattn"),
           "uce": ("lightning_unlearn.methods.UCE", "kv-xattn")}


class _ParserCaught(Exception):
    pass


@pytest.fixture(scope="module")
def resolve():
    """``args`` -> the fully resolved unlearn config as a dict, by the parser ``unlearn()`` builds
    (same trainer defaults and parser options), built once: a fresh one per run costs ~0.2 s."""
    caught = {}

    class Catch(stream.UnlearnCLI):
        def parse_arguments(self, parser, args):
            caught["parser"] = parser
            raise _ParserCaught

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stream, "UnlearnCLI", Catch)
        with pytest.raises(_ParserCaught):
            stream.unlearn([])
    return lambda args: caught["parser"].parse_args(list(args)).as_dict()


def _callbacks(config):
    return [(c["class_path"].rsplit(".", 1)[1], c.get("init_args") or {}) for c in config["trainer"]["callbacks"]]


def _without_overlaid_keys(config, lora=False):
    """The config less what an overlay may change (callbacks, protocol keys; with ``lora`` the
    trainable set and its adapter), the run folder and the list of --config files read."""
    trainer = {k: v for k, v in config["trainer"].items() if k != "callbacks"}
    kept = {k: v for k, v in config["stream"].items() if k not in ("run_dir", "protocol", "merge", "simultaneous")}
    model = {k: v for k, v in config["model"].items() if not (lora and k in ("trainable", "lora"))}
    return {**{k: v for k, v in config.items() if k != "config"}, "trainer": trainer, "stream": kept, "model": model}


@pytest.mark.parametrize("stream_kind", ["styles", "objects"])
def test_every_study_run_is_its_base_plus_the_overlays_its_name_says(resolve, stream_kind):
    study = Study.load(Path(f"configs/tinyworld/study_{stream_kind}.yaml"))
    assert [r.name for r in study.runs] == list(CALLBACKS), "runs added, renamed or reordered: update the table"
    bases = {m: resolve(["--config", f"configs/tinyworld/{m}_{stream_kind}_sequential.yaml"]) for m in METHODS}
    for run in study.runs:
        config = resolve([*run.args, *study.common, f"--stream.run_dir={study.run_dir(run)}"])
        method = RUN_BASES.get(run.name, "ca" if run.name.startswith("ca_") else "esd")
        where = f"study_{stream_kind}/{run.name}"
        lora = run.name in LORA_RUNS
        class_path, trainable = METHODS[method]
        assert (config["model"]["method"]["class_path"], config["model"]["trainable"]) == (
            class_path, "lora" if lora else trainable), where
        drift, *stack = _callbacks(config)
        assert drift[0] == "DriftRecorder", f"{where}: the base's DriftRecorder was dropped"
        assert [cls for cls, _ in stack] == [cls for cls, _ in CALLBACKS[run.name]], where
        for (cls, got), (_, want) in zip(stack, CALLBACKS[run.name]):
            assert {k: got[k] for k in want} == want, f"{where}: {cls}"
        protocol = PROTOCOLS.get(run.name.removeprefix("ca_"), SEQUENTIAL)
        got = config["stream"]
        assert got["protocol"] == protocol["protocol"] and got["merge"] == protocol["merge"], where
        assert {k: got["simultaneous"][k] for k in protocol["simultaneous"]} == protocol["simultaneous"], where
        assert got["run_dir"] == str(study.run_dir(run))
        # Whatever the overlays do not name is the base's: a protocol overlay keeps the base's
        # evaluation settings, data, model and trainer options.
        assert _without_overlaid_keys(config, lora) == _without_overlaid_keys(bases[method], lora), where


def test_a_stream_overlay_changes_only_the_keys_it_names(resolve):
    base = resolve(["--config", "configs/tinyworld/ca_objects_sequential.yaml", "--stream.evaluation.steps=3"])
    both = resolve(["--config", "configs/tinyworld/ca_objects_sequential.yaml", "--stream.evaluation.steps=3",
                    "--config", "configs/protocols/independent_ties.yaml",
                    "--config", "configs/protocols/simultaneous.yaml"])
    # The second protocol overlay sets the protocol and the simultaneous cap, and leaves the merge
    # settings the first one wrote; the base's stream keys and a command-line edit survive both.
    assert both["stream"]["protocol"] == "simultaneous" and both["stream"]["simultaneous"]["max_steps"] == 300
    assert both["stream"]["merge"] == PROTOCOLS["independent_ties"]["merge"]
    assert both["stream"]["evaluation"] == base["stream"]["evaluation"] and both["stream"]["evaluation"]["steps"] == 3
    assert both["stream"]["run_dir"] == base["stream"]["run_dir"] == "runs/ca_objects_sequential"


@pytest.mark.parametrize("base_config", ["configs/tinyworld/esd_styles_sequential.yaml",
                                         "configs/tinyworld/ca_styles_sequential.yaml"])
def test_the_lora_overlay_changes_only_the_trainable_set_and_its_adapter(resolve, base_config):
    base = resolve(["--config", base_config])
    lora = resolve(["--config", base_config, "--config", "configs/trainable/lora.yaml",
                    "--config", "configs/protocols/independent_ties.yaml"])
    assert lora["model"]["trainable"] == "lora"
    assert lora["model"]["lora"] == {"rank": 4, "alpha": 4.0, "targets": ["attn2.to_k", "attn2.to_v"]}
    assert lora["stream"]["merge"] == PROTOCOLS["independent_ties"]["merge"]  # stacks with a protocol overlay
    model = {k: v for k, v in lora["model"].items() if k not in ("trainable", "lora")}
    assert model == {k: v for k, v in base["model"].items() if k not in ("trainable", "lora")}
    assert lora["trainer"] == base["trainer"] and lora["data"] == base["data"]


def test_the_esd_collapse_regime_overlay_changes_only_the_learning_rate(resolve):
    base = resolve(["--config", "configs/tinyworld/esd_styles_sequential.yaml"])
    regime = resolve(["--config", "configs/tinyworld/esd_styles_sequential.yaml",
                      "--config", "configs/tinyworld/esd_collapse_regime.yaml"])
    assert base["model"]["lr"] == 5.0e-4 and regime["model"]["lr"] == 2.0e-3
    assert {k: v for k, v in regime["model"].items() if k != "lr"} == {k: v for k, v in base["model"].items() if k != "lr"}
    assert regime["trainer"] == base["trainer"] and regime["data"] == base["data"] and regime["stream"] == base["stream"]


@pytest.mark.parametrize("name", ["esd_styles", "ca_styles", "esd_objects", "ca_objects"])
def test_the_dit_overlays_change_only_the_backbone_and_the_run_folder(resolve, name):
    base = resolve(["--config", f"configs/tinyworld/{name}_sequential.yaml"])
    dit = resolve(["--config", f"configs/tinyworld/{name}_sequential.yaml",
                   "--config", f"configs/tinyworld_dit/{name}_sequential.yaml"])
    assert base["model"]["backbone"] == "tinyworld" and dit["model"]["backbone"] == "tinyworld-dit"
    assert dit["stream"]["run_dir"] == f"runs/dit/{name}_sequential"
    assert {**dit["model"], "backbone": "tinyworld"} == base["model"]
    assert {**dit["stream"], "run_dir": base["stream"]["run_dir"]} == base["stream"]
    assert dit["trainer"] == base["trainer"] and dit["data"] == base["data"]


def test_the_backbone_study_pairs_every_unet_run_with_its_dit_twin(resolve):
    study = Study.load(Path("configs/tinyworld_dit/study_backbones.yaml"))
    configs = {run.name: resolve([*run.args, *study.common, f"--stream.run_dir={study.run_dir(run)}"]) for run in study.runs}
    unet_runs = [n for n in configs if n.startswith("unet_")]
    # ESD and CA x both protocols; ESD sequential at 50 steps a request and on keys/values
    # only; ESD with L1 (two weights), projection; CA with L1, projection, top-k; and two
    # DiT-only runs that split esd-x's extra weights (queries, output projections)
    # and four on the 12-block DiT, each its 8-block twin with the backbone changed
    assert len(unet_runs) == 12 and len(configs) == 30
    dit12_runs = [n for n in configs if n.startswith("dit12_")]
    assert dit12_runs == ["dit12_esd_sequential", "dit12_esd_simultaneous", "dit12_ca_sequential", "dit12_esd_kv"]
    for name in dit12_runs:
        deep, twin = configs[name], configs["dit_" + name[len("dit12_"):]]
        assert deep["model"] == {**twin["model"], "backbone": "tinyworld-dit-12"}
        assert {**deep, "model": None, "stream": None, "config": None} == {**twin, "model": None, "stream": None, "config": None}
        assert {**deep["stream"], "run_dir": None} == {**twin["stream"], "run_dir": None}
    for half in ("qkv", "kvo"):
        assert {**configs[f"dit_esd_{half}"]["model"], "trainable": "kv-xattn"} == configs["dit_esd_kv"]["model"]
        assert configs[f"dit_esd_{half}"]["model"]["trainable"] == f"{half}-xattn"
        assert {**configs[f"dit_esd_{half}"]["stream"], "run_dir": None} == {**configs["dit_esd_kv"]["stream"], "run_dir": None}
    for name in unet_runs:
        unet, dit = configs[name], configs["dit_" + name[len("unet_"):]]
        assert (unet["model"]["backbone"], dit["model"]["backbone"]) == ("tinyworld", "tinyworld-dit")
        assert {**dit["model"], "backbone": "tinyworld"} == unet["model"]
        assert {**dit["stream"], "run_dir": None} == {**unet["stream"], "run_dir": None}
        assert dit["data"] == unet["data"] and dit["data"]["requests"] == ["Abstractionism", "Byzantine", "Cartoon", "Ukiyo-e"]
        assert dit["trainer"]["callbacks"] == unet["trainer"]["callbacks"]  # the same regularizers on both


def test_the_orders_study_pairs_each_esd_x_run_with_its_kv_xattn_twin(resolve):
    """The replicated kv-xattn runs differ from the replicated esd-x runs only in what they train,
    so the replicates' differences measure the trainable set (docs/dit.md)."""
    study = Study.load(Path("configs/tinyworld_dit/study_backbones_esd_orders.yaml"))
    assert all(run.seeds == [0, 1, 2] and run.shuffle_order for run in study.runs)
    configs = {run.name: resolve([*run.args, *study.common]) for run in study.runs}
    assert set(configs) == {f"{b}_esd_{s}" for b in ("unet", "dit") for s in ("sequential", "kv")}
    for backbone in ("unet", "dit"):
        esd_x, kv = configs[f"{backbone}_esd_sequential"], configs[f"{backbone}_esd_kv"]
        assert (esd_x["model"]["trainable"], kv["model"]["trainable"]) == ("esd-x", "kv-xattn")
        assert {**kv["model"], "trainable": "esd-x"} == esd_x["model"]
        assert kv["stream"] == esd_x["stream"] and kv["data"] == esd_x["data"]
