"""Free-form chat around the facts: what a person types that is not a fact, and the reply to it.

The natural dialogues (``rxt-eval --natural``, the demo's later training segments) put lines
people really type between the facts: greetings, remarks about their day, questions about the
world, "lol". They come from ``chatterbot-corpus`` (see :mod:`rxt_mlx.bench.open_data`) plus
the short interjections below, split between training and held-out by a hash of the line, like
the values. A small demo cannot answer them, so each gets a short generic reply chosen by the
kind of line (:func:`generic_reply`): a greeting, a question, or a remark. A question about a
fact the user never stated gets :data:`NOT_TOLD` instead of an invented value.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# Short on purpose: every token of a reply is decoded, encoded and trained on at every such turn.
GREETING_REPLY = "Hello! Tell me about yourself."
QUESTION_REPLY = "I cannot answer that. I only remember what you tell me."
REMARK_REPLY = "I see. Tell me more."

# slot -> what the user has not told yet
NOT_TOLD = {
    "name": "You have not told me your name yet.",
    "city": "You have not told me where you live yet.",
    "pet": "You have not told me about a pet yet.",
    "job": "You have not told me your job yet.",
    "color": "You have not told me your favourite color yet.",
    "food": "You have not told me your favourite food yet.",
    "number": "You have not told me your lucky number yet.",
}

INTERJECTIONS = """lol|haha|hahaha|ok|okay|ok cool|cool|nice|wow|hmm|hmm ok|yes|no|yeah|nope|sure|thanks|
thank you|great|oh|omg|lmao|bye|good night|see you|alright|fine|whatever|interesting|really?|why?|
what?|huh?|nice one|good to know|makes sense|I see|got it|brb|back|sorry|oops|yay|ugh|meh|hi|hey|
hello|hey there|hi there|hello there, what's up?|good morning|good evening|morning!|yo|sup?|
I'm tired|long day today|it's raining again|I just had lunch|work was busy|I'm bored|the weather is nice|
I went for a walk|I need coffee|what a day|it's so hot today|I can't sleep|I'm back from the gym|
what time is it?|is it going to rain?|tell me a joke|how are you?|what's up?|who are you?|
what can you do?|are you a robot?|do you like music?|what is the capital of France?|
how far is the moon?|why is the sky blue?|what's 2+2?|can you help me?""".replace("\n", "").split("|")

_GREETINGS = (
    "hi",
    "hello",
    "hey",
    "greetings",
    "howdy",
    "hiya",
    "yo",
    "morning",
    "good morning",
    "good evening",
    "good afternoon",
    "sup",
    "what's up",
    "whats up",
    "top of the morning",
)
_QUESTION_WORDS = {
    "what",
    "who",
    "where",
    "when",
    "why",
    "how",
    "which",
    "whose",
    "do",
    "does",
    "did",
    "are",
    "is",
    "am",
    "can",
    "could",
    "will",
    "would",
    "should",
    "shall",
    "have",
    "has",
    "may",
    "tell",
}


def line_kind(line: str) -> str:
    """``greeting``, ``question`` or ``remark``: which generic reply a free-form line gets."""
    text = line.strip().lower()
    bare = re.sub(r"[^a-z' ]", " ", text).split()
    joined = " ".join(bare)
    if any(joined == greeting or joined.startswith(greeting + " ") for greeting in _GREETINGS):
        return "greeting"
    if text.endswith("?") or (bare and bare[0] in _QUESTION_WORDS):
        return "question"
    return "remark"


def generic_reply(line: str) -> str:
    """The demo's reply to a line that is neither a fact nor a question about one."""
    return {"greeting": GREETING_REPLY, "question": QUESTION_REPLY, "remark": REMARK_REPLY}[line_kind(line)]


def _sentence(line: str) -> str:
    """A chat line as the first sentence of a longer message ("long day today" -> "Long day today.")."""
    line = line[0].upper() + line[1:]
    return line if line[-1] in ".!?" else line + "."


@dataclass(frozen=True)
class FreeChat:
    """Filler lines per split and how often a conversation gets the natural variations.

    ``lead_share``: a statement opens with a short greeting or remark ("Hi! My name is Eve.").
    ``pair_share``: one message states two facts ("My name is Eve and I live in Lisbon.").
    ``not_told_share``: a conversation asks about a fact it never stated.
    """

    lines: dict[str, list[str]]
    lead_share: float = 0.2
    pair_share: float = 0.15
    not_told_share: float = 0.2

    @classmethod
    def load(cls, **shares: float) -> FreeChat:
        """chatterbot-corpus lines and :data:`INTERJECTIONS`, split by the value hash of :mod:`dialogues`."""
        from rxt_mlx.bench import open_data
        from rxt_mlx.bench.dialogues import SMALLTALK, split_values

        smalltalk = [query for query, _ in SMALLTALK]
        return cls(split_values(open_data.chat_lines() + INTERJECTIONS + smalltalk), **shares)

    def filler(self, split: str, rng: random.Random) -> tuple[str, str]:
        """(line, generic reply) of one off-topic turn."""
        line = rng.choice(self.lines[split])
        return line, generic_reply(line)

    def lead(self, split: str, rng: random.Random) -> str:
        """A short greeting or remark to open a statement with, as a sentence ("" most of the time)."""
        if rng.random() >= self.lead_share:
            return ""
        for _ in range(20):
            line = rng.choice(self.lines[split])
            if len(line.split()) <= 6 and line_kind(line) != "question":
                return _sentence(line) + " "
        return ""
