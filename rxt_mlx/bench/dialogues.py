"""Multi-turn dialogue data for training and evaluating RxT memory.

Synthetic conversations: the user states facts about themselves (name, city, pet, job,
favourite color and food, lucky number), chats about other things, and later asks about
those facts. Every answer follows from what was said earlier in the same conversation, so
a model can only answer recall questions from its short-term memory.

Two splits come from disjoint pools: ``heldout`` uses entity values and phrasings that never
occur in ``train``. Values (real words and made-up ones) go to a split by a stable hash of the
value. Phrasings are composed from parts (question frames x noun phrases, statement openers x
statement cores) and each whole template goes to a split by its hash, so a held-out sentence is
new while its words are all known from training. For training, ``fresh_values`` draws half of
the values as made-up words generated on the fly (always from the training side of the hash),
so a model learns to copy values rather than memorise a list. Generation is seeded and
reproducible: the same ``(split, seed, count)`` always gives the same conversations.

Exact-match rule (used by ``rxt-eval``): a generated answer is correct when it equals the
expected answer after :func:`normalize_answer` (surrounding whitespace stripped, runs of
whitespace collapsed to one space); case and punctuation must match. The looser *entity
match* asks that every entity value of the fact occurs in the answer as a whole word.

User data: :func:`load_jsonl` reads one conversation per line,
``{"turns": [{"query": ..., "answer": ...}, ...]}``; a turn may carry the recall fields
``kind``, ``slot``, ``values`` and ``distance`` so user conversations can be evaluated too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rxt_mlx.bench.free_chat import NOT_TOLD, FreeChat
from rxt_mlx.errors import RxTError

SPLITS = ("train", "heldout")
HELDOUT_FRACTION = 5  # one value in HELDOUT_FRACTION goes to the held-out split


class DialogueDataError(RxTError, ValueError):
    """A JSONL conversations file that :func:`load_jsonl` cannot read; the message names the line."""


@dataclass(frozen=True)
class Turn:
    """One interaction: the user's query and the expected answer.

    ``kind`` is ``statement`` (the user states a fact), ``question`` (the user asks about a
    fact stated ``distance`` turns earlier), ``smalltalk``, or ``user`` (loaded data without
    recall labels). ``values`` are the fact's entity values (the exact-match entities).
    """

    query: str
    answer: str
    kind: str = "user"
    slot: str | None = None
    values: tuple[str, ...] = ()
    distance: int | None = None

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        if self.values:
            data["values"] = list(self.values)
        return data


@dataclass(frozen=True)
class Conversation:
    """An ordered list of turns sharing one short-term memory."""

    turns: tuple[Turn, ...]

    def to_dict(self) -> dict:
        return {"turns": [turn.to_dict() for turn in self.turns]}

    @property
    def questions(self) -> list[tuple[int, Turn]]:
        """(turn index, turn) of every recall question."""
        return [(index, turn) for index, turn in enumerate(self.turns) if turn.kind == "question"]


def normalize_answer(text: str) -> str:
    """The canonical form compared by the exact-match rule."""
    return re.sub(r"\s+", " ", text).strip()


def exact_match(generated: str, expected: str) -> bool:
    """True when the generated answer is exactly the expected one (see module docstring)."""
    return normalize_answer(generated) == normalize_answer(expected)


def entity_match(generated: str, values: Iterable[str]) -> bool:
    """True when every entity value occurs in ``generated`` as a whole word (case-sensitive)."""
    text = normalize_answer(generated)
    return all(re.search(rf"(?<![\w]){re.escape(value)}(?![\w])", text) for value in values)


# ---------------------------------------------------------------------------------------------
# Entity values. A value belongs to the held-out split when a stable hash of it says so.

FIRST_NAMES = """Ann Anna Alice Adam Alex Amelia Arthur Ben Bella Boris Carl Clara Chloe Daniel Diana David
Elena Emma Eric Ethan Eva Felix Fiona Frank Grace George Hannah Harry Helen Henry Ivan Iris Isaac
Jack Jane James Julia Kate Karl Laura Leo Lily Lucas Lucy Maria Mark Martin Mia Nina Noah Nora Oliver
Olga Oscar Paul Peter Rosa Ruby Sam Sara Sofia Simon Tom Tina Victor Vera Walter Zoe Yuki Omar Priya
Ravi Mei Chen Aisha Fatima Hugo Igor Jonas Kevin Linda Marta Nadia Otto Pablo Quinn Rita Sven Tara
Uma Wendy Xavier Yara Zara Bruno Cecil Dora Edgar Flora Gina Hector Ines Joel Kira Liam Mila Nils""".split()

CITIES = """Paris London Berlin Madrid Rome Vienna Prague Warsaw Oslo Stockholm Helsinki Dublin Lisbon Athens
Tokyo Osaka Seoul Beijing Shanghai Delhi Mumbai Cairo Lagos Nairobi Toronto Chicago Boston Denver Seattle
Austin Miami Dallas Phoenix Sydney Melbourne Auckland Lima Bogota Santiago Quito Havana Montreal Ottawa
Zurich Geneva Munich Hamburg Cologne Milan Naples Turin Venice Florence Seville Valencia Porto Krakow
Gdansk Riga Tallinn Vilnius Kyiv Minsk Sofia Bucharest Budapest Belgrade Zagreb Istanbul Ankara Tehran
Dubai Doha Karachi Dhaka Bangkok Hanoi Manila Jakarta Perth Brisbane Denver Memphis Portland Tampa
Nashville Houston Atlanta Calgary Vancouver Leeds Glasgow Bristol Cardiff Belfast Bergen Malmo Aarhus""".split()

PET_NAMES = """Rex Max Bella Luna Charlie Lucy Daisy Milo Coco Rocky Buddy Bailey Oreo Pepper Shadow Simba
Tiger Ginger Biscuit Muffin Peanut Snowy Sunny Ziggy Pixel Nugget Bubbles Whiskers Fluffy Spot Lucky
Toby Teddy Rusty Benji Bruno Cookie Honey Maple Olive Pumpkin Sparky Ace Bolt Dash Felix Gizmo Jasper
Kiki Lola Mochi Nala Otis Pip Remy Sasha Tofu Waffles Yoda Zeus Apollo Blue Cleo Duke Echo Fudge""".split()

PET_KINDS = "dog cat parrot rabbit hamster turtle goldfish horse pony canary ferret lizard".split()

JOBS = """teacher doctor nurse engineer baker farmer pilot chef lawyer dentist painter writer singer
plumber carpenter electrician architect scientist librarian mechanic pharmacist firefighter
journalist photographer designer programmer gardener musician actor dancer tailor butcher barber
accountant cashier waiter driver sailor soldier judge surgeon vet translator editor economist
astronaut biologist chemist physicist historian geologist florist jeweler potter sculptor poet
banker broker clerk janitor locksmith miner""".split()

COLORS = """red blue green yellow orange purple pink brown black white gray silver gold violet indigo
turquoise teal maroon navy olive beige crimson scarlet amber coral lavender lilac magenta cyan ivory
cream peach mint jade ruby emerald sapphire bronze copper khaki""".split()

FOODS = """pizza pasta sushi tacos curry soup salad steak burgers noodles dumplings pancakes waffles
omelettes risotto lasagna ramen paella falafel hummus kebab chili stew porridge bagels croissants
cheesecake chocolate icecream cookies muffins pie rice beans tofu lentils mushrooms potatoes carrots
apples bananas mangoes cherries grapes oranges peaches strawberries blueberries olives cheese bread
yogurt popcorn""".split()

SYLLABLES = """ka lo mi ren to sa vi dan el mar ni ko ta be ra lin so fe du ga hi jo ki lu me no pa ri
su te vo ze ba ce di fa go ha ja le ma ne po qu ro si tu va wi ya zo al an ar en er in or on""".split()
CITY_SUFFIXES = "ton burg ville field port stad holm dale mouth ford".split()


def _in_heldout(value: str) -> bool:
    """Split by the value alone, so a held-out value is unseen in every slot of the training split."""
    digest = hashlib.sha256(value.encode()).digest()
    return digest[0] % HELDOUT_FRACTION == 0


@dataclass(frozen=True)
class MadeUpWords:
    """Pronounceable made-up words: syllables, then an optional suffix (cities)."""

    syllables: int = 2
    suffixes: tuple[str, ...] = ()
    capitalize: bool = True

    def draw(self, rng: random.Random) -> str:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(self.syllables, self.syllables + 1)))
        if self.suffixes:
            word += rng.choice(self.suffixes)
        return word.capitalize() if self.capitalize else word

    def pool(self, count: int, seed: str) -> list[str]:
        """``count`` distinct words, the same for the same seed."""
        rng = random.Random(seed)
        words: set[str] = set()
        while len(words) < count:
            words.add(self.draw(rng))
        return sorted(words)

    def fresh_training_word(self, rng: random.Random) -> str:
        """A new word from the training side of the split (never one the held-out split may use)."""
        while True:
            word = self.draw(rng)
            if not _in_heldout(word):
                return word


@dataclass(frozen=True)
class LetterChain:
    """Made-up words spelled like real ones: an order-2 letter model of real words.

    Syllable words never have "ph", "ch" or "sh" and seldom a doubled letter; a model trained
    to copy only those miscopied real held-out words ("sapphire" -> "sappren", "Ines" ->
    "Innes"), so some fresh values are spelled like these.
    """

    followers: dict[str, tuple[str, ...]]
    min_length: int = 3
    max_length: int = 10

    @classmethod
    def fit(cls, words: Iterable[str]) -> LetterChain:
        followers: dict[str, list[str]] = {}
        for word in words:
            padded = "^^" + word.lower() + "$"
            for i in range(len(padded) - 2):
                followers.setdefault(padded[i : i + 2], []).append(padded[i + 2])
        return cls({context: tuple(options) for context, options in followers.items()})

    def draw(self, rng: random.Random) -> str:
        while True:
            word = "^^"
            while not word.endswith("$") and len(word) <= self.max_length + 2:
                word += rng.choice(self.followers[word[-2:]])
            word = word[2:].rstrip("$")
            if self.min_length <= len(word) <= self.max_length:
                return word

    def fresh_training_word(self, rng: random.Random, capitalize: bool) -> str:
        """A new word, held out in no casing (real words recur across slots: Olive, olive)."""
        while True:
            word = self.draw(rng)
            if not (_in_heldout(word) or _in_heldout(word.capitalize())):
                return word.capitalize() if capitalize else word


def split_values(values: Iterable[str]) -> dict[str, list[str]]:
    """``{"train": [...], "heldout": [...]}``: each distinct value on the side its hash picks."""
    split: dict[str, list[str]] = {"train": [], "heldout": []}
    for value in sorted(set(values)):
        split["heldout" if _in_heldout(value) else "train"].append(value)
    return split


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ---------------------------------------------------------------------------------------------
# Slots: how a fact is stated, acknowledged, asked and answered.


@dataclass(frozen=True)
class Slot:
    """One kind of fact. Templates use ``{v}`` (the value), ``{kind}`` (pet kind), ``{a}`` (article)."""

    name: str
    statements: dict[str, list[str]]
    questions: dict[str, list[str]]
    acknowledgement: str
    answer: str
    values: dict[str, list[str]] = field(repr=False)
    cores: dict[str, list[str]] = field(default_factory=dict, repr=False)
    made_up: MadeUpWords | None = None
    fresh_share: float = 0.0
    letters: LetterChain | None = None
    letter_share: float = 0.0

    def sample(self, split: str, rng: random.Random) -> dict[str, str]:
        if split == "train" and self.made_up and self.fresh_share and rng.random() < self.fresh_share:
            if self.letters and rng.random() < self.letter_share:
                value = self.letters.fresh_training_word(rng, self.made_up.capitalize)
            else:
                value = self.made_up.fresh_training_word(rng)
        else:
            value = rng.choice(self.values[split])
        fields = {"v": value, "a": _article(value)}
        if self.name == "pet":
            fields["kind"] = rng.choice(PET_KINDS)
        return fields

    def entities(self, fields: dict[str, str]) -> tuple[str, ...]:
        return (fields["kind"], fields["v"]) if "kind" in fields else (fields["v"],)


def _numbers() -> list[str]:
    return [str(n) for n in range(1, 1000)]


# Phrasings are composed from parts, so the model sees every word and frame in training while
# the held-out split still gets whole sentences it never saw: a full template goes to the
# held-out split when a stable hash of it says so (as with values), at least one per slot.

QUESTION_FRAMES = [
    "What is {x}?",
    "What's {x}?",
    "Tell me {x}.",
    "Do you remember {x}?",
    "Remind me of {x}.",
    "Can you recall {x}?",
    "Do you know {x}?",
    "Please tell me {x}.",
    "What was {x} again?",
    "Can you tell me {x}?",
    "I forgot {x}. What is it?",
    "Quick question: what is {x}?",
    "Could you repeat {x}?",
    "Say {x} again, please.",
]
STATEMENT_PREFIXES = ["", "By the way, ", "Oh, and ", "Just so you know, ", "Fun fact: ", "Also, ", "Listen, "]

# slot: (question noun phrases, extra whole questions, statement cores, acknowledgement, answer, values)
SLOT_PHRASES = {
    "name": (
        ["my name", "my first name", "the name I told you", "what I am called"],
        ["Who am I?", "Which name did I tell you?", "How do I call myself?"],
        ["my name is {v}.", "I am {v}.", "call me {v}.", "I'm {v}.", "people call me {v}.", "the name is {v}."],
        "Nice to meet you, {v}.",
        "Your name is {v}.",
    ),
    "city": (
        ["my city", "my home city", "the city I live in", "my hometown", "where I live"],
        ["Where do I live?", "Which city do I live in?", "In which city is my home?"],
        [
            "I live in {v}.",
            "my city is {v}.",
            "I am from {v}.",
            "my home is in {v}.",
            "I reside in {v}.",
            "home for me is the city of {v}.",
        ],
        "I hear {v} is a lovely place.",
        "You live in {v}.",
    ),
    "pet": (
        ["my pet", "my animal", "the pet I have", "the animal I keep"],
        ["What pet do I have?", "Which pet do I own?", "What animal lives with me?"],
        [
            "I have a {kind} named {v}.",
            "my pet is a {kind} called {v}.",
            "I own a {kind} named {v}.",
            "my {kind} is called {v}.",
            "at home I keep a {kind} called {v}.",
        ],
        "A {kind} named {v}, how lovely.",
        "Your pet is a {kind} named {v}.",
    ),
    "job": (
        ["my job", "my profession", "my work", "my occupation", "what I do for a living"],
        ["What do I do for work?", "Which job do I have?", "How do I earn my living?"],
        [
            "I work as {a} {v}.",
            "I am {a} {v} by profession.",
            "my job: I am {a} {v}.",
            "by trade I am {a} {v}.",
            "for a living I work as {a} {v}.",
        ],
        "Being {a} {v} sounds interesting.",
        "You work as {a} {v}.",
    ),
    "color": (
        ["my favourite color", "my favorite color", "the color I like", "the color I love most"],
        ["Which color do I like?", "What color do I love?", "What color did I say I like?"],
        [
            "my favourite color is {v}.",
            "I love the color {v}.",
            "the color I like most is {v}.",
            "I really like the color {v}.",
            "my favorite color is {v}.",
            "the best color for me is {v}.",
        ],
        "I like the color {v} too.",
        "Your favourite color is {v}.",
    ),
    "food": (
        ["my favourite food", "my favorite food", "the food I like", "the dish I love most"],
        ["Which food do I like?", "What food do I love?", "What food did I say I like?"],
        [
            "my favourite food is {v}.",
            "I love to eat {v}.",
            "the food I like most is {v}.",
            "I really enjoy eating {v}.",
            "my favorite food is {v}.",
            "the best food for me is {v}.",
        ],
        "Yum, {v} is tasty.",
        "Your favourite food is {v}.",
    ),
    "number": (
        ["my lucky number", "the number that is lucky for me", "the lucky number I told you"],
        ["Which number is lucky for me?", "What number did I say was lucky?", "What number brings me luck?"],
        [
            "my lucky number is {v}.",
            "the number {v} is lucky for me.",
            "my lucky number: {v}.",
            "I consider {v} my lucky number.",
            "for luck I always pick {v}.",
        ],
        "Good luck with {v}.",
        "Your lucky number is {v}.",
    ),
}


# More of the ways people say and ask these things, used with ``open_values`` (the natural
# dialogues) so the project's own tables stay reproducible.
NATURAL_CORES = {
    "name": ["my name's {v}.", "I'm called {v}.", "they call me {v}."],
    "city": ["I'm from {v}.", "I live in {v} now.", "I grew up in {v} and still live there."],
    "pet": ["I've got a {kind} called {v}.", "my {kind}'s name is {v}.", "we have a {kind}, {v}."],
    "job": ["I'm {a} {v}.", "I work as {a} {v} these days.", "I'm working as {a} {v}."],
    "color": ["I'd say my favourite color is {v}.", "my favourite colour is {v}."],
    "food": ["I could eat {v} every day.", "nothing beats {v} for me.", "I love {v}."],
    "number": ["I always pick {v} as my lucky number.", "my lucky number is {v}, always has been."],
}
NATURAL_QUESTIONS = {
    "name": ["Do you know who I am?", "What's my name again?", "Do you remember what I'm called?"],
    "city": ["Where am I from?", "Do you know where I live?", "Which town do I live in?"],
    "pet": ["What's my pet called?", "Do you remember my pet?", "What kind of pet do I have?"],
    "job": ["What do I do?", "What's my job again?", "Do you remember what I work as?"],
    "color": ["What's my favourite colour?", "Which color do I like best?"],
    "food": ["What do I like to eat?", "What's my favourite dish?"],
    "number": ["What's my lucky number again?", "Which number do I consider lucky?"],
}


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def _split_templates(templates: Iterable[str]) -> dict[str, list[str]]:
    """Templates per split by hash; the first template by hash order is forced held out if none is."""
    split = split_values(templates)
    if not split["heldout"]:
        first = min(split["train"], key=lambda t: hashlib.sha256(t.encode()).digest())
        split = {"train": [t for t in split["train"] if t != first], "heldout": [first]}
    return split


def _questions(nouns: list[str]) -> list[str]:
    """Every frame with every noun phrase; clauses ("where I live") skip frames that ask "what"."""
    questions = []
    for frame in QUESTION_FRAMES:
        for noun in nouns:
            if noun.startswith(("what ", "where ")) and "what" in frame.lower():
                continue
            questions.append(frame.format(x=noun))
    return questions


def _slot_templates(nouns: list[str], extra: list[str], cores: list[str]) -> tuple[dict, dict, dict]:
    statements = [_capitalize(prefix + core) for prefix in STATEMENT_PREFIXES for core in cores]
    return _split_templates(statements), _split_templates(_questions(nouns) + extra), _split_templates(cores)


def _open_values() -> dict[str, list[str]]:
    """Each slot's values from the data packages (:mod:`rxt_mlx.bench.open_data`)."""
    from rxt_mlx.bench import open_data

    return {
        "name": open_data.first_names(),
        "city": open_data.cities(),
        "pet": open_data.pet_names(),
        "job": open_data.jobs(),
        "color": open_data.colors(),
        "food": open_data.foods(),
        "number": [],
    }


def build_slots(
    made_up_values: bool = True,
    fresh_values: bool = False,
    fresh_letters: float = 0.0,
    open_values: bool = False,
    real_only: bool = False,
) -> dict[str, Slot]:
    """The fact slots with their per-split value pools and phrasing templates.

    ``made_up_values=False`` leaves jobs, colors and foods to the real words (the pools the
    first segments of the demo model were trained on). ``fresh_values=True`` makes half of the
    training split's names, cities, pet names, jobs, colors and foods made-up words drawn anew
    each time: a model cannot learn that many values by heart, so it learns to copy them.
    ``fresh_letters`` of those fresh words are spelled by a :class:`LetterChain` of the
    training split's real words instead of from syllables. ``open_values=True`` adds the large
    pools of :mod:`rxt_mlx.bench.open_data` (thousands of first names and cities, job titles,
    color and food names) to each slot's real values, split by the same hash. ``real_only=True``
    leaves out every made-up word (the natural evaluation asks only about real values).
    """
    names, cities, pets = MadeUpWords(), MadeUpWords(1, tuple(CITY_SUFFIXES)), MadeUpWords(1)
    lowercase = MadeUpWords(capitalize=False)
    words = {
        "name": (FIRST_NAMES, names, names.pool(1500, "names")),
        "city": (CITIES, cities, cities.pool(1000, "cities")),
        "pet": (PET_NAMES, pets, pets.pool(800, "pets")),
        # Made-up words next to the real ones: with only a few dozen real colors a small model
        # learns to name a color it knows instead of copying the one it was told.
        "job": (JOBS, lowercase, lowercase.pool(300, "jobs") if made_up_values else []),
        "color": (COLORS, lowercase, lowercase.pool(200, "colors") if made_up_values else []),
        "food": (FOODS, lowercase, lowercase.pool(300, "foods") if made_up_values else []),
        "number": (_numbers(), None, []),
    }
    if open_values:
        opened = _open_values()
        words = {name: (real + opened[name], made_up, pool) for name, (real, made_up, pool) in words.items()}
    if real_only:
        words = {name: (real, made_up, []) for name, (real, made_up, _) in words.items()}
    letters = None
    if fresh_letters:
        # per slot, so a word in two lists (Bella, Sofia) counts twice
        real_words = (
            w
            for name, (real, _, _) in words.items()
            if name != "number"
            for w in split_values(real)["train"]
            if w.isalpha()
        )
        letters = LetterChain.fit(real_words)
    slots = {}
    for name, (nouns, extra, cores, ack, answer) in SLOT_PHRASES.items():
        if open_values:
            extra, cores = extra + NATURAL_QUESTIONS[name], cores + NATURAL_CORES[name]
        statements, questions, core_split = _slot_templates(nouns, extra, cores)
        real, made_up, pool = words[name]
        fresh = 0.5 if fresh_values and made_up and pool else 0.0
        values = split_values(real + pool)
        slots[name] = Slot(
            name, statements, questions, ack, answer, values, core_split, made_up, fresh, letters, fresh_letters
        )
    return slots


SMALLTALK = [
    ("How are you?", "I am fine, thank you."),
    ("Hello!", "Hello! How can I help?"),
    ("Good morning.", "Good morning to you."),
    ("Thanks!", "You are welcome."),
    ("Tell me a joke.", "Why did the cat sit on the laptop? To watch the mouse."),
    ("What can you do?", "I can remember what you tell me."),
    ("What day is it?", "I do not know the date."),
    ("Is it going to rain?", "I cannot check the weather."),
    ("I am tired today.", "Get some rest."),
    ("The weather is nice today.", "A good day for a walk."),
    ("I watched a movie yesterday.", "I hope you enjoyed it."),
    ("Do you like music?", "I like all kinds of music."),
    ("What is two plus two?", "Two plus two is four."),
    ("Say something nice.", "You are doing great."),
    ("I had coffee this morning.", "Coffee is a good start."),
    ("Let us talk about books.", "Books are wonderful."),
    ("Are you a robot?", "I am a small language model."),
    ("I went for a run.", "Running is healthy."),
    ("What is the opposite of up?", "The opposite of up is down."),
    ("Can you help me?", "Sure, what do you need?"),
    ("It is late.", "Then sleep well soon."),
    ("I like trains.", "Trains are fun."),
    ("Count to three.", "One, two, three."),
    ("Ok.", "Ok."),
]


# ---------------------------------------------------------------------------------------------
# Conversation generation.


def _place_facts(rng: random.Random, num_turns: int, slots: list[str], max_distance: int) -> list[tuple]:
    """Pick (slot, statement turn, question turn or None) with question distances spread uniformly."""
    used: set[int] = set()
    placed = []
    for slot in slots:
        for _ in range(50):
            ask = rng.random() < 0.85
            distance = rng.randint(1, min(max_distance, num_turns - 1))
            stated = rng.randint(0, num_turns - 1 - distance) if ask else rng.randint(0, num_turns - 1)
            asked = stated + distance if ask else None
            if stated not in used and asked not in used:
                used.update({stated} | ({asked} if ask else set()))
                placed.append((slot, stated, asked))
                break
    return placed


def generate_conversation(
    rng: random.Random,
    split: str,
    slots: dict[str, Slot],
    min_turns: int = 6,
    max_turns: int = 10,
    max_facts: int = 4,
    chat: FreeChat | None = None,
) -> Conversation:
    """One synthetic conversation drawn from ``split``'s values and templates.

    With ``chat`` the off-topic turns are free-form lines with generic replies, and some
    statements open with a remark, state two facts at once, or a question asks about a fact
    never stated (see :class:`rxt_mlx.bench.free_chat.FreeChat`); without it, :data:`SMALLTALK`.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    num_turns = rng.randint(min_turns, max_turns)
    chosen = rng.sample(sorted(slots), k=rng.randint(1, min(max_facts, len(slots))))
    turns: list[Turn | None] = [None] * num_turns
    placed = _place_facts(rng, num_turns, chosen, max_distance=num_turns - 1)
    for slot_name, stated, asked in placed:
        slot = slots[slot_name]
        fields = slot.sample(split, rng)
        values = slot.entities(fields)
        lead = chat.lead(split, rng) if chat else ""
        turns[stated] = Turn(
            lead + rng.choice(slot.statements[split]).format(**fields),
            slot.acknowledgement.format(**fields),
            "statement",
            slot_name,
            values,
        )
        if asked is not None:
            turns[asked] = _question(rng, split, slot, fields, asked - stated)
    if chat:
        _add_free_chat(rng, split, slots, turns, chosen, chat)
    filled = [turn or _filler(rng, split, chat) for turn in turns]
    return Conversation(tuple(filled))


def _question(rng: random.Random, split: str, slot: Slot, fields: dict[str, str], distance: int) -> Turn:
    return Turn(
        rng.choice(slot.questions[split]),
        slot.answer.format(**fields),
        "question",
        slot.name,
        slot.entities(fields),
        distance,
    )


def _filler(rng: random.Random, split: str, chat: FreeChat | None) -> Turn:
    return Turn(*(chat.filler(split, rng) if chat else rng.choice(SMALLTALK)), "smalltalk")


def _add_free_chat(rng, split, slots, turns: list[Turn | None], chosen: list[str], chat: FreeChat) -> None:
    """Two facts in one message, and a question about a fact never stated, in free turns."""
    unused = [name for name in sorted(slots) if name not in chosen]
    statements = [i for i, turn in enumerate(turns) if turn and turn.kind == "statement"]
    if unused and statements and rng.random() < chat.pair_share:
        stated = rng.choice(statements)
        first, slot = turns[stated], slots[unused.pop(rng.randrange(len(unused)))]
        fields = slot.sample(split, rng)
        core = rng.choice(slot.cores[split]).format(**fields)
        joined = first.query.rstrip(".") + " and " + core
        ack = first.answer + " " + slot.acknowledgement.format(**fields)
        turns[stated] = Turn(
            joined, ack, "statement", f"{first.slot}+{slot.name}", first.values + slot.entities(fields)
        )
        later = [i for i in range(stated + 1, len(turns)) if turns[i] is None]
        if later:
            asked = rng.choice(later)
            turns[asked] = _question(rng, split, slot, fields, asked - stated)
    free = [i for i, turn in enumerate(turns) if turn is None]
    if unused and free and rng.random() < chat.not_told_share:
        slot = slots[rng.choice(unused)]
        turns[rng.choice(free)] = Turn(rng.choice(slot.questions[split]), NOT_TOLD[slot.name], "not_told", slot.name)


def generate_conversations(
    count: int,
    split: str = "train",
    seed: int = 0,
    min_turns: int = 6,
    max_turns: int = 10,
    max_facts: int = 4,
    made_up_values: bool = True,
    fresh_values: bool = False,
    fresh_letters: float = 0.0,
    open_values: bool = False,
    chat: FreeChat | None = None,
    real_only: bool = False,
) -> list[Conversation]:
    """``count`` reproducible conversations of ``split`` (same arguments, same conversations)."""
    rng = random.Random(f"rxt-dialogue:{split}:{seed}")
    slots = build_slots(made_up_values, fresh_values, fresh_letters, open_values, real_only)
    return [generate_conversation(rng, split, slots, min_turns, max_turns, max_facts, chat) for _ in range(count)]


def natural_conversations(count: int, split: str = "heldout", seed: int = 0) -> list[Conversation]:
    """The natural dialogues of ``rxt-eval --natural``: real values of the data packages only (no
    made-up words), free-form filler, 6-12 turns."""
    return generate_conversations(count, split, seed, 6, 12, open_values=True, chat=FreeChat.load(), real_only=True)


def natural_slots() -> dict[str, Slot]:
    """The slots :func:`natural_conversations` draws from (their pools give the chance figure)."""
    return build_slots(open_values=True, real_only=True)


def iterate_conversations(split: str = "train", seed: int = 0, **kwargs) -> Iterator[Conversation]:
    """An endless reproducible stream of conversations (for training)."""
    rng = random.Random(f"rxt-dialogue-stream:{split}:{seed}")
    slots = build_slots()
    for _ in itertools.count():
        yield generate_conversation(rng, split, slots, **kwargs)


# ---------------------------------------------------------------------------------------------
# JSONL user data.


def _turn_from_dict(data: dict, where: str) -> Turn:
    if not isinstance(data, dict) or not isinstance(data.get("query"), str) or not isinstance(data.get("answer"), str):
        raise DialogueDataError(f"{where}: a turn must be an object with string 'query' and 'answer', got {data!r}")
    values = data.get("values") or ()
    if isinstance(values, str):
        values = (values,)
    return Turn(
        data["query"],
        data["answer"],
        data.get("kind", "user"),
        data.get("slot"),
        tuple(values),
        data.get("distance"),
    )


def load_jsonl(path: str | Path) -> list[Conversation]:
    """Conversations from a JSONL file, one ``{"turns": [{"query", "answer"}, ...]}`` per line."""
    path = Path(path)
    conversations = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DialogueDataError(f"{where}: not valid JSON ({error})") from None
            turns = record.get("turns") if isinstance(record, dict) else None
            if not isinstance(turns, list) or not turns:
                raise DialogueDataError(f"{where}: expected an object with a non-empty 'turns' list")
            conversations.append(
                Conversation(tuple(_turn_from_dict(t, f"{where} turn {i}") for i, t in enumerate(turns)))
            )
    return conversations


def save_jsonl(conversations: Iterable[Conversation], path: str | Path) -> None:
    """Write conversations in the JSONL format :func:`load_jsonl` reads."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for conversation in conversations:
            handle.write(json.dumps(conversation.to_dict()) + "\n")


ALPHABET = "".join(chr(c) for c in range(ord("A"), ord("Z") + 1)) + "abcdefghijklmnopqrstuvwxyz0123456789"


def template_lines(conversations: Iterable[Conversation]) -> Iterator[str]:
    """Tokenizer training text: every query and answer with the entity values cut out, plus the alphabet.

    A tokenizer trained on this never merges the letters of a value into a piece of its own:
    every name, city or food is spelled in the same short pieces, whether the model met it
    in training or not, so copying an unseen value is the same skill as copying a seen one.
    """
    yield " ".join(ALPHABET)
    for line_turn in (turn for conversation in conversations for turn in conversation.turns):
        for text in (line_turn.query, line_turn.answer):
            for value in line_turn.values:
                text = re.sub(rf"(?<![\w]){re.escape(value)}(?![\w])", " ", text)
            yield text
