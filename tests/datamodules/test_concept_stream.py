import pytest

from datamodules.concept_stream import ConceptStreamDataModule
from lightning_unlearn.requests import Request, RequestError


def test_requests_in_order_with_kinds():
    dm = ConceptStreamDataModule(requests=["Van Gogh", {"concept": "star", "kind": "object"}, "Monet"])
    assert dm.requests == [Request("Van Gogh", "style"), Request("star", "object"), Request("Monet", "style")]
    assert dm.current_request.concept == "Van Gogh"
    dm.set_position(2)
    assert dm.current_request.concept == "Monet"
    assert [r.concept for r in dm.served()] == ["Van Gogh", "star"]


def test_state_dict_round_trip_and_mismatch():
    dm = ConceptStreamDataModule(requests=["Van Gogh", "Monet", "Cartoon"])
    dm.set_position(1)
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
    dm.set_position(1)
    assert list(dm.train_dataloader())[0]["seed"].tolist() != seeds_first[0]
