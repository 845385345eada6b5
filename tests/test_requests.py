"""Requests are checked against the vocabulary; a near-miss is refused with a suggestion."""

import pytest

from lightning_unlearn.requests import RequestError
from lightning_unlearn.tinyworld.concepts import tiny_vocabulary


@pytest.mark.parametrize("name, meant", [("van gogh", "Van Gogh"), ("Pop art", "Pop Art"), ("Picaso", "Picasso"),
                                         ("hart", "heart")])
def test_a_concept_off_by_case_or_a_letter_or_two_is_refused_with_a_suggestion(name, meant):
    vocabulary = tiny_vocabulary()
    # Refused even when only the case differs: a takedown names exactly what it erases.
    with pytest.raises(RequestError, match=rf"unknown concept '{name}' \(did you mean '{meant}'\?\)"):
        vocabulary.parse([name])


def test_an_unknown_concept_far_from_every_known_one_gets_no_suggestion():
    with pytest.raises(RequestError) as info:
        tiny_vocabulary().kind_of("Rembrandt")
    assert "did you mean" not in str(info.value) and "unknown concept 'Rembrandt'" in str(info.value)
