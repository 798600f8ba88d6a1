"""OpenAI's stop strings over a streamed answer (rxt_app.stop_strings)."""

from __future__ import annotations

import pytest
from rxt_app.stop_strings import StopStrings


@pytest.mark.parametrize(
    ("pieces", "stops", "shown", "hit"),
    [
        (["Hello", " wor", "ld"], [], "Hello world", False),
        (["Hello", " wor", "ld"], ["wor"], "Hello ", True),
        (["Hel", "lo"], ["llo"], "He", True),  # a stop string split over two pieces
        (["ab", "c", "d"], ["cx"], "abcd", False),  # a held-back tail that was not a stop string after all
        (["a", "END", "more"], ["END", "a"], "", True),  # the first stop string in the text wins
        (["x", "y"], [""], "xy", False),
    ],
)
def test_the_answer_is_shown_up_to_the_first_stop_string(pieces, stops, shown, hit):
    stop_strings = StopStrings(stops)
    streamed = "".join(stop_strings.add(piece) for piece in pieces) + stop_strings.finish()
    assert streamed == shown == stop_strings.visible
    assert stop_strings.hit is hit


def test_text_that_may_begin_a_stop_string_is_held_back_until_it_is_known():
    stop_strings = StopStrings(["</s>"])
    assert stop_strings.add("Hi <") == "Hi "
    assert stop_strings.add("/") == ""
    assert stop_strings.add("b>") == "</b>"
    assert stop_strings.add(" </s> gone") == " "
    assert stop_strings.hit and stop_strings.visible == "Hi </b> "
