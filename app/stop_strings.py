"""OpenAI's ``stop``: an answer ends before the first stop string, which is never shown.

Text streams out as it is decoded, except a tail that might be the beginning of a stop string:
that is held back until the next pieces tell.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStrings:
    """Cuts a streamed answer at the first of ``stops`` (empty strings are ignored)."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = tuple(stop for stop in stops if stop)
        self.text = ""
        self.shown = 0
        self.cut: int | None = None

    @property
    def hit(self) -> bool:
        """Whether a stop string was found: the answer is over."""
        return self.cut is not None

    @property
    def visible(self) -> str:
        """The answer as the client gets it: everything before the stop string."""
        return self.text if self.cut is None else self.text[: self.cut]

    def add(self, piece: str) -> str:
        """Take the next decoded ``piece``; returns the text that can be shown now."""
        if self.cut is not None:
            return ""
        self.text += piece
        found = [index for stop in self.stops if (index := self.text.find(stop, self.shown)) >= 0]
        if found:
            self.cut = min(found)
            return self._release(self.cut)
        return self._release(len(self.text) - self._held_back())

    def finish(self) -> str:
        """The text held back at the end of an answer that met no stop string."""
        return "" if self.cut is not None else self._release(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(self.text) - self.shown), longest, -1):
                if self.text.endswith(stop[:length]):
                    longest = length
                    break
        return longest

    def _release(self, end: int) -> str:
        released, self.shown = self.text[self.shown : end], max(self.shown, end)
        return released
