import pytest

from lightning_unlearn.datamodules.concept_stream import ConceptStreamDataModule
from lightning_unlearn.protocols import plan_request
from lightning_unlearn.requests import Request, RequestError


def serve_next(dm: ConceptStreamDataModule, index: int, protocol: str = "sequential", train_steps: int | None = None):
    """Give ``dm`` the plan of request ``index`` (as serve_request does); returns the plan."""
    plan = plan_request(dm.requests, index, protocol)
    dm.begin_request(plan, train_steps)
    return plan


def test_requests_in_order_with_kinds():
    dm = ConceptStreamDataModule(requests=["Van Gogh", {"concept": "star", "kind": "object"}, "Monet"])
    assert dm.requests == [Request("Van Gogh", "style"), Request("star", "object"), Request("Monet", "style")]
    assert dm.current_request.concept == "Van Gogh"
    plan = serve_next(dm, 2)
    assert dm.current_request.concept == "Monet" and dm.plan is plan
    assert [r.concept for r in dm.served()] == ["Van Gogh", "star"]


def test_state_dict_round_trip_and_mismatch():
    dm = ConceptStreamDataModule(requests=["Van Gogh", "Monet", "Cartoon"])
    serve_next(dm, 1)
    other = ConceptStreamDataModule(requests=["Van Gogh", "Monet", "Cartoon"])
    other.load_state_dict(dm.state_dict())
    assert other.position == 1 and other.current_request.concept == "Monet"
    different = ConceptStreamDataModule(requests=["Monet", "Van Gogh", "Cartoon"])
    with pytest.raises(RequestError, match="saved stream differs"):
        different.load_state_dict(dm.state_dict())


@pytest.mark.parametrize(
    "requests, message",
    [
        ([], "request list is empty"),
        (["Rembrandt"], "unknown concept 'Rembrandt'"),
        ([{"concept": "star", "kind": "style"}], "'star' is a object"),
        (["Monet", "Monet"], "duplicate request: 'Monet'"),
    ],
)
def test_bad_requests_are_named(requests, message):
    with pytest.raises(RequestError, match=message):
        ConceptStreamDataModule(requests=requests)


def test_erase_captions_and_batches():
    dm = ConceptStreamDataModule(requests=["Van Gogh", "star"], batch_size=4, steps_per_request=3)
    assert dm.erase_captions(dm.requests[0]) == ["a painting in Van Gogh style"]
    assert dm.erase_captions(dm.requests[1]) == ["a star"]
    full = ConceptStreamDataModule(requests=["Van Gogh"], erase_prompt="full")
    assert "a star in Van Gogh style" in full.erase_captions(full.requests[0])
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and all(len(b["caption"]) == 4 for b in batches)
    assert batches[0]["caption"][0] == "a painting in Van Gogh style"
    seeds_first = [b["seed"].tolist() for b in batches]
    assert seeds_first == [b["seed"].tolist() for b in dm.train_dataloader()]
    serve_next(dm, 1)
    assert list(dm.train_dataloader())[0]["seed"].tolist() != seeds_first[0]


def test_a_request_for_an_already_unlearned_concept_is_an_error_by_default():
    from lightning_unlearn.requests import AlreadyUnlearnedError

    with pytest.raises(AlreadyUnlearnedError, match="request 'Monet' asks to unlearn a concept the model has already"):
        ConceptStreamDataModule(requests=["Van Gogh", "Monet"], unlearned=["Monet"])


def test_skip_drops_already_unlearned_requests_with_a_notice(caplog):
    import logging

    with caplog.at_level(logging.INFO):
        dm = ConceptStreamDataModule(
            requests=["Van Gogh", "Monet", "star"], unlearned=["Monet", "Cartoon"], already_unlearned="skip"
        )
    assert [r.concept for r in dm.requests] == ["Van Gogh", "star"]
    assert "skipping request 'Monet': the model has already unlearned it" in caplog.text
    assert "Van Gogh" not in caplog.text.split("skipping", 1)[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(unlearned=["Rembrandt"]), "unknown concept 'Rembrandt'"),
        (dict(unlearned=["Monet"], already_unlearned="skip"), "every request .* has already been unlearned"),
        (dict(unlearned=["Monet"], already_unlearned="ignore"), "already_unlearned must be 'error' or 'skip'"),
    ],
)
def test_bad_unlearned_settings_are_named(kwargs, message):
    with pytest.raises(RequestError, match=message):
        ConceptStreamDataModule(requests=["Monet"], **kwargs)


def _lightning_batches(data: ConceptStreamDataModule) -> list[list[int]]:
    """The seeds of the batches the attached Trainer trains on: the datamodule's loader after
    Lightning's own processing (where it injects its shuffling DistributedSampler)."""
    from lightning.pytorch.trainer.connectors.data_connector import _process_dataloader
    from lightning.pytorch.trainer.states import RunningStage, TrainerFn

    loader = _process_dataloader(data.trainer, TrainerFn.FITTING, RunningStage.TRAINING, data.train_dataloader())
    return [b["seed"].tolist() for b in loader]


@pytest.fixture
def ddp_trainer(monkeypatch):
    """``ddp_trainer(rank, devices)``: the Trainer a DDP process of that rank builds (Lightning
    reads its rank from LOCAL_RANK), without launching anything; ``rank=None``: a plain Trainer."""
    import lightning.fabric.utilities.rank_zero as fabric_rank_zero
    import lightning.pytorch.utilities.rank_zero as pl_rank_zero
    from lightning.pytorch import Trainer

    # A DDP Trainer built for rank 1 sets the process-wide rank-zero flag; restore it after the
    # test, or every later logger in this process would think it runs on rank 1 (and not write).
    for owner in (fabric_rank_zero.rank_zero_only, pl_rank_zero.rank_zero_only):
        monkeypatch.setattr(owner, "rank", getattr(owner, "rank", 0), raising=False)

    def build(rank: int | None, devices: int = 1):
        if rank is None:
            return Trainer(accelerator="cpu", devices=1, logger=False)
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp", logger=False)
        assert trainer.global_rank == rank and trainer.world_size == devices
        return trainer

    return build


def test_ddp_ranks_serve_the_same_request_and_shard_the_global_batch_in_order(ddp_trainer):
    def batches(rank: int | None, batch_size: int) -> list[list[int]]:
        data = ConceptStreamDataModule(requests=["Monet", "Cartoon"], batch_size=batch_size, steps_per_request=3)
        data.trainer = ddp_trainer(rank, devices=2)
        serve_next(data, 1)
        return _lightning_batches(data)

    single = batches(None, 4)
    rank0, rank1 = batches(0, 2), batches(1, 2)
    assert len(single) == len(rank0) == len(rank1) == 3
    for whole, a, b in zip(single, rank0, rank1):
        # Rank r takes every second sample of the global batch, in order.
        assert a == whole[0::2] and b == whole[1::2]


def test_ddp_with_one_process_trains_on_the_plain_run_s_batches(ddp_trainer):
    # A one-GPU SLURM allocation under --trainer.strategy=ddp: Lightning would inject a
    # shuffling DistributedSampler into a loader without one.
    def batches(rank: int | None) -> list[list[int]]:
        data = ConceptStreamDataModule(requests=["Monet", "Cartoon"], batch_size=4, steps_per_request=3)
        data.trainer = ddp_trainer(rank, devices=1)
        return _lightning_batches(data)

    plain = batches(None)
    assert batches(0) == plain
    flat = [seed for batch in plain for seed in batch]
    assert flat == list(range(flat[0], flat[0] + 12))  # the request's samples, in order


def test_the_request_loader_resumes_after_the_batches_it_served():
    dm = ConceptStreamDataModule(requests=["Van Gogh"], batch_size=2, steps_per_request=5)
    loader = dm.train_dataloader()
    all_seeds = [b["seed"].tolist() for b in loader]
    partial = iter(loader)
    served = [next(partial)["seed"].tolist() for _ in range(3)]
    state = loader.state_dict()
    assert state == {"batches_served": 3} and served == all_seeds[:3]
    fresh = ConceptStreamDataModule(requests=["Van Gogh"], batch_size=2, steps_per_request=5).train_dataloader()
    fresh.load_state_dict(state)
    assert len(fresh) == 5  # Lightning's step counting keeps the whole request's length
    assert [b["seed"].tolist() for b in fresh] == all_seeds[3:]
    assert [b["seed"].tolist() for b in fresh] == all_seeds  # the skip applies to one pass only


def test_the_stream_state_restores_what_the_current_training_erases():
    dm = ConceptStreamDataModule(requests=["Van Gogh", "Monet", "Cartoon"], steps_per_request=4)
    plan = serve_next(dm, 2, "simultaneous", train_steps=9)
    assert dm.erasing == tuple(dm.requests[:3]) and dm.training_captions()[0] == "a painting in Van Gogh style"
    other = ConceptStreamDataModule(requests=["Van Gogh", "Monet", "Cartoon"], steps_per_request=4)
    other.load_state_dict(dm.state_dict())
    assert other.plan == plan and other.position == 2 and other.train_steps == 9


def test_a_resumed_fit_keeps_the_plan_it_was_given_and_refuses_another_request_s_state():
    # serve_request gives the datamodule its plan before fit(ckpt_path) restores the checkpoint:
    # the plan object (shared with the module) stays, and a state of another request is refused.
    dm = ConceptStreamDataModule(requests=["Van Gogh", "Monet", "Cartoon"], steps_per_request=4)
    serve_next(dm, 1)
    saved = dm.state_dict()
    resumed = ConceptStreamDataModule(requests=["Van Gogh", "Monet", "Cartoon"], steps_per_request=4)
    plan = serve_next(resumed, 1)
    resumed.load_state_dict(saved)
    assert resumed.plan is plan
    serve_next(resumed, 2)
    with pytest.raises(RequestError, match="is not the request being served"):
        resumed.load_state_dict(saved)


def test_a_state_saved_before_plans_were_recorded_still_loads():
    dm = ConceptStreamDataModule(requests=["Van Gogh", "Monet", "Cartoon"], steps_per_request=4)
    old = {"position": 1, "requests": [vars(r) for r in dm.requests], "erasing": [vars(dm.requests[1])], "train_steps": 4}
    dm.load_state_dict(old)
    assert dm.plan == plan_request(dm.requests, 1, "sequential") and dm.train_steps == 4


def test_a_plan_of_another_stream_is_refused():
    dm = ConceptStreamDataModule(requests=["Van Gogh", "Monet"])
    with pytest.raises(RequestError, match="is not this stream's"):
        dm.begin_request(plan_request([Request("Cartoon", "style"), Request("Monet", "style")], 0, "sequential"))
