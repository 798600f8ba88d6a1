"""Finding the stored conversation a client's resent history continues.

An OpenAI client sends the whole conversation with every request: a system prompt, the complete
turns so far (user, assistant) and the new user message. RxT keeps that state in one STM per
conversation, so the server looks for the stored conversation whose first turns are the request's
and then only has to write the turns it does not hold yet into the memory.

Each prefix of a history has a digest (:func:`history_digests`): the model, the system prompt and
the turns so far, hashed in a chain. :class:`HistoryIndex` maps digests to the conversations that
hold that prefix; it is brought up to date from the storage before each lookup (conversations
whose revision changed, in this process or another, are read again), and it also knows the turns
answered but not committed yet, so a client that sends its next message at once finds the
conversation still updating its memory. The index only proposes: the caller compares the
stored turns with the request before continuing a conversation.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from rxt_app.storage import Conversation, Message, Storage
from rxt_app.system_prompts import SystemPrompts

Turn = tuple[str, str]
"""A complete turn: the user's query and the assistant's answer."""


@dataclass(frozen=True)
class History:
    """What a stateless request holds: an optional system prompt, complete turns, the new query."""

    system: str | None
    turns: tuple[Turn, ...]
    query: str


def history_digests(fingerprint: str, system: str | None, turns: Sequence[Turn]) -> list[str]:
    """Digests of the history after 0, 1, ..., len(turns) turns (for one model and system prompt)."""
    chain = hashlib.sha256(b"rxt-serve history 1\0" + fingerprint.encode() + b"\0")
    chain.update(b"N" if system is None else b"S" + _counted(system))
    digests = [chain.hexdigest()]
    for query, answer in turns:
        chain.update(_counted(query) + _counted(answer))
        digests.append(chain.hexdigest())
    return digests


def _counted(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return f"{len(data)}:".encode() + data


def stored_turns(messages: Sequence[Message]) -> list[Turn]:
    """A transcript's complete turns in order."""
    queries = {m.turn: m.text for m in messages if m.role == "user"}
    answers = {m.turn: m.text for m in messages if m.role == "assistant"}
    return [(queries[turn], answers[turn]) for turn in sorted(queries) if turn in answers]


class HistoryIndex:
    """Digest of a history prefix → the conversations (of one model) holding it. Use from one thread."""

    def __init__(self, storage: Storage, system_prompts: SystemPrompts, fingerprint: str):
        self.storage = storage
        self.system_prompts = system_prompts
        self.fingerprint = fingerprint
        self._indexed: dict[str, tuple[int, str | None]] = {}
        self._digests: dict[str, list[str]] = {}
        self._holders: dict[str, set[str]] = defaultdict(set)
        self._pending: dict[str, str] = {}

    def refresh(self) -> None:
        """Read again the conversations changed since the last refresh (any process), drop deleted ones."""
        conversations = [c for c in self.storage.conversations() if c.model_fingerprint == self.fingerprint]
        prompts = self.system_prompts.all()
        current = {c.id for c in conversations}
        for conversation_id in [c for c in self._indexed if c not in current]:
            self._drop(conversation_id)
        for conversation in conversations:
            version = (conversation.revision, prompts.get(conversation.id))
            if self._indexed.get(conversation.id) != version:
                self._index(conversation, prompts.get(conversation.id))
                self._indexed[conversation.id] = version

    def longest_match(self, digests: Sequence[str]) -> tuple[int, set[str]]:
        """The most turns ``t >= 1`` for which conversations hold the prefix ``digests[t]``, and those
        conversations; ``(0, set())`` when none holds even the first turn."""
        for turns in range(len(digests) - 1, 0, -1):
            holders = set(self._holders.get(digests[turns], ()))
            if digests[turns] in self._pending:
                holders.add(self._pending[digests[turns]])
            if holders:
                return turns, holders
        return 0, set()

    def add_pending(self, digest: str, conversation_id: str) -> None:
        """A turn answered in ``conversation_id`` makes its history ``digest``; not committed yet."""
        self._pending[digest] = conversation_id

    def discard_pending(self, digest: str) -> None:
        self._pending.pop(digest, None)

    def _index(self, conversation: Conversation, system: str | None) -> None:
        self._drop(conversation.id)
        turns = stored_turns(self.storage.messages(conversation.id))
        digests = history_digests(self.fingerprint, system, turns)[1:]
        self._digests[conversation.id] = digests
        for digest in digests:
            self._holders[digest].add(conversation.id)

    def _drop(self, conversation_id: str) -> None:
        self._indexed.pop(conversation_id, None)
        for digest in self._digests.pop(conversation_id, []):
            holders = self._holders.get(digest)
            if holders is not None:
                holders.discard(conversation_id)
                if not holders:
                    del self._holders[digest]
