"""Setting checks and the "did you mean" suggestion."""

import math

import pytest

from lightning_unlearn.checks import at_least, closest_name, did_you_mean, edit_distance, in_interval, non_negative, positive
from lightning_unlearn.errors import SettingsError
from lightning_unlearn.tinyworld.concepts import OBJECTS, STYLES

KNOWN = [*STYLES, *OBJECTS]


def test_edit_distance_counts_a_swap_of_neighbours_as_one_edit():
    assert edit_distance("monet", "monet") == 0
    assert edit_distance("monett", "monet") == 1
    assert edit_distance("moent", "monet") == 1  # swapped neighbours
    assert edit_distance("pcaso", "picasso") == 2
    assert edit_distance("", "abc") == 3


@pytest.mark.parametrize("name, meant", [
    ("van gogh", "Van Gogh"), ("VAN-GOGH", "Van Gogh"), ("Ukiyoe", "Ukiyo-e"), ("Pcasso", "Picasso"),
    ("Moent", "Monet"), ("sqare", "square"), ("Cubsim", "Cubism"),
    ("Rembrandt", None), ("ring", None), ("dog", None), ("Impressionist", "Impressionism"),
])
def test_a_near_miss_suggests_the_known_name_and_anything_else_nothing(name, meant):
    assert closest_name(name, KNOWN) == meant
    assert did_you_mean(name, KNOWN) == ("" if meant is None else f" (did you mean {meant!r}?)")


def test_checks_name_the_option_and_the_value():
    at_least(1, 1, "--x")
    with pytest.raises(SettingsError, match=r"^--data.steps_per_request must be >= 1, got 0$"):
        at_least(0, 1, "--data.steps_per_request")
    with pytest.raises(SettingsError, match="must be >= 1, got True"):
        at_least(True, 1, "--x")  # a bool is not a count
    for bad in (0, -1.0, math.inf, math.nan, "1e-4"):
        with pytest.raises(SettingsError, match="--model.lr must be a finite number > 0"):
            positive(bad, "--model.lr")
    non_negative(0.0, "--w")
    with pytest.raises(SettingsError, match="--w must be a finite number >= 0, got nan"):
        non_negative(math.nan, "--w")
    in_interval(1.0, 0, 1, "--k")
    with pytest.raises(SettingsError, match=r"--k must lie in \(0, 1\], got 0"):
        in_interval(0, 0, 1, "--k")
    in_interval(-1, -1, 1, "--t", low_open=False)
