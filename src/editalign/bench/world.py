"""The benchmark's world: seeded entities with attributes, prompts about them, and responses.

Everything here is plain Python and deterministic from :class:`BenchConfig` (its ``seed``
included): the same config always yields the same world, prompts and noisy data, on any
machine. Attribute values come from disjoint single-word lexicons, so any word of a
response that is a value names its attribute; this is what lets the gold judge and the
reviser read free model output (see :mod:`editalign.bench.judge`).

Responses are sentences built from varied templates. Noisy responses (the data the
initial policy is fine-tuned on) carry three kinds of localised error, each recorded with
its character span:

- ``wrong_value``: a stated attribute has another value of the same lexicon;
- ``hedge``: an unwanted clause before a sentence's final period (``", I think"``);
- ``filler``: an unwanted sentence (``"I hope this helps!"``) between sentences.

Removing the hedges and fillers and putting the right values back gives the clean
response exactly: that is the minimal edit the reviser makes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# --------------------------------------------------------------------------- lexicons

# Jobs and species start with a consonant so that "a {value}" stays grammatical whatever
# value a wrong-value error puts there.
JOBS = ("baker", "pilot", "nurse", "farmer", "teacher", "plumber", "dentist", "painter",
        "lawyer", "chef", "tailor", "sailor", "miner", "barber", "florist", "jeweller",
        "butcher", "librarian", "carpenter", "gardener")
CITIES = ("Ambleford", "Brackwater", "Coldmere", "Dunholt", "Elmsworth", "Fairhaven",
          "Glenrock", "Hollowby", "Ivydale", "Kingsmoor", "Larkfield", "Marrowdale",
          "Northcliff", "Oakhurst", "Pebbleton", "Quarrington", "Redmarsh", "Stonebury",
          "Thornwick", "Westerly")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "grey",
           "black", "white", "teal", "violet", "crimson", "silver", "maroon")
SPECIES = ("cat", "dog", "rabbit", "parrot", "horse", "goat", "hamster", "tortoise",
           "ferret", "donkey", "pony", "hedgehog", "lizard", "duck", "turtle", "canary")
PERSON_AGES = tuple(str(a) for a in range(18, 91))
ANIMAL_AGES = tuple(str(a) for a in range(1, 21))

FIRST_NAMES = ("Alice", "Bruno", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo", "Irene",
               "Jonas", "Karla", "Leo", "Mira", "Nico", "Olga", "Pavel", "Quinn", "Rosa",
               "Stefan", "Tessa", "Ulrich", "Vera", "Walter", "Xenia", "Yusuf", "Zora")
LAST_NAMES = ("Abbott", "Brandt", "Castillo", "Dorsey", "Eklund", "Fischer", "Garber", "Holm",
              "Ibsen", "Jansen", "Keller", "Lindqvist", "Moreau", "Novak", "Ortega", "Petrov",
              "Quist", "Rinaldi", "Sorensen", "Tanaka")
PET_NAMES = ("Biscuit", "Pepper", "Mango", "Noodle", "Whiskers", "Bramble", "Clover", "Pickle",
             "Waffle", "Toffee", "Pumpkin", "Ziggy", "Juniper", "Socks", "Marble", "Nutmeg",
             "Tinsel", "Button", "Crumpet", "Dumpling", "Fudge", "Hazel", "Jasper", "Kiwi",
             "Luna", "Muffin", "Peanut", "Rascal", "Sprout", "Truffle", "Widget", "Pippin")

# Attributes of each kind of entity, in the order the "about" answer lists them by default.
KINDS: dict[str, tuple[str, ...]] = {
    "person": ("job", "city", "age", "colour"),
    "animal": ("species", "city", "age", "colour"),
}


def lexicon(attribute: str, kind: str | None = None) -> tuple[str, ...]:
    """All values an attribute can take (ages depend on the kind of entity)."""
    if attribute == "age":
        return ANIMAL_AGES if kind == "animal" else PERSON_AGES
    return {"job": JOBS, "city": CITIES, "colour": COLOURS, "species": SPECIES}[attribute]


# --------------------------------------------------------------------------- phrasings

SENTENCE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "job": ("{name} works as a {value}.", "{name} is a {value} by trade.",
            "By profession, {name} is a {value}.", "{name} earns a living as a {value}."),
    "city": ("{name} lives in {value}.", "{name}'s home town is {value}.",
             "{name} comes from {value}.", "Home for {name} is the town of {value}."),
    "age": ("{name} is {value} years old.", "{name} is aged {value}.",
            "{name}'s age is {value}."),
    "colour": ("{name}'s favourite colour is {value}.", "{name} likes the colour {value} best.",
               "The colour {name} loves most is {value}."),
    "species": ("{name} is a {value}.", "{name} is a pet {value}.",
                "As animals go, {name} is a {value}."),
}
ABOUT_PROMPTS = ("Tell me about {name}.", "Who is {name}?", "Describe {name}.",
                 "What do you know about {name}?")
QUESTION_PROMPTS: dict[str, tuple[str, ...]] = {
    "job": ("What is {name}'s job?", "What does {name} do for a living?"),
    "city": ("Where does {name} live?", "What is {name}'s home town?"),
    "age": ("How old is {name}?", "What is {name}'s age?"),
    "colour": ("What is {name}'s favourite colour?", "Which colour does {name} like best?"),
    "species": ("What kind of animal is {name}?", "What animal is {name}?"),
}
# Unwanted phrases. A hedge is inserted right before a sentence's final period, a filler
# as a sentence of its own; deleting the inserted text restores the sentence exactly.
HEDGES = (", I think", ", I believe", ", if I remember correctly", ", probably",
          ", as far as I know")
FILLERS = ("Great question!", "I hope this helps!", "Let me know if you have any other questions.",
           "Thanks for asking.", "That is all I know.")

ERROR_KINDS = ("wrong_value", "hedge", "filler")


def _check_lexicons() -> None:
    """Values of different attributes and names never share a word (the judge relies on it)."""
    seen: dict[str, str] = {}
    groups = {"job": JOBS, "city": CITIES, "colour": COLOURS, "species": SPECIES,
              "name": FIRST_NAMES + LAST_NAMES + PET_NAMES}
    for group, words in groups.items():
        for word in words:
            key = word.lower()
            if seen.get(key, group) != group:
                raise AssertionError(f"{word!r} is both a {seen[key]} and a {group}")
            seen[key] = group
    template_words = {w.lower() for texts in (*SENTENCE_TEMPLATES.values(), HEDGES, FILLERS)
                      for t in texts for w in re.findall(r"[A-Za-z]+", t)}
    clash = template_words & set(seen)
    if clash:
        raise AssertionError(f"template words that are also values or names: {sorted(clash)}")


_check_lexicons()


# --------------------------------------------------------------------------- config


@dataclass
class BenchConfig:
    """Sizes, phrasing and error rates of the generated task. Same config, same task."""

    seed: int = 0
    num_people: int = 40
    num_animals: int = 20
    values_per_attribute: int = 12  # lexicon entries the world draws true values from
    about_prompts_per_entity: int = 2  # "Tell me about X." phrasings per entity
    questions_per_attribute: int = 1  # "What is X's job?" phrasings per (entity, attribute)
    test_fraction: float = 0.2  # prompts held out for evaluation
    # Noisy SFT data for the initial policy.
    responses_per_prompt: int = 4
    wrong_value_rate: float = 0.15  # per stated attribute
    hedge_rate: float = 0.1  # per sentence
    filler_rate: float = 0.2  # per response (at most one filler sentence)
    short_name_rate: float = 0.5  # later sentences call a person by first name only

    def __post_init__(self) -> None:
        for name in ("wrong_value_rate", "hedge_rate", "filler_rate", "short_name_rate",
                     "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.num_people > len(FIRST_NAMES) * len(LAST_NAMES):
            raise ValueError(f"num_people must be <= {len(FIRST_NAMES) * len(LAST_NAMES)}")
        if self.num_animals > len(PET_NAMES):
            raise ValueError(f"num_animals must be <= {len(PET_NAMES)}")
        if self.num_people + self.num_animals < 1:
            raise ValueError("the world needs at least one entity")
        if not 2 <= self.values_per_attribute <= min(len(COLOURS), len(SPECIES)):
            raise ValueError(f"values_per_attribute must be in [2, {len(COLOURS)}]")
        if self.about_prompts_per_entity > len(ABOUT_PROMPTS) or \
                self.questions_per_attribute > 2:
            raise ValueError("more prompt phrasings requested than exist")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- world


@dataclass(frozen=True)
class Entity:
    id: str
    kind: str
    name: str  # how prompts name it (full name for people)
    short: str  # how later sentences may name it
    facts: dict[str, str]  # attribute -> value

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "short": self.short,
                "facts": dict(self.facts)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entity:
        return cls(str(data["id"]), data["kind"], data["name"], data["short"],
                   dict(data["facts"]))


@dataclass
class World:
    entities: list[Entity]

    def __post_init__(self) -> None:
        self.by_id = {e.id: e for e in self.entities}
        # Longest names first, so "Alice Novak" wins over a hypothetical "Alice".
        self._by_name = sorted(self.entities, key=lambda e: -len(e.name))

    def entity_in(self, text: str) -> Entity | None:
        """The entity a prompt is about (the first whose full name occurs), or None."""
        for entity in self._by_name:
            if re.search(rf"\b{re.escape(entity.name)}\b", text):
                return entity
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"entities": [e.to_dict() for e in self.entities]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> World:
        return cls([Entity.from_dict(e) for e in data["entities"]])


def build_world(config: BenchConfig) -> World:
    rng = random.Random(f"world-{config.seed}")
    people = rng.sample([f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES],
                        config.num_people)
    pets = rng.sample(PET_NAMES, config.num_animals)
    entities = []
    for kind, names in (("person", people), ("animal", pets)):
        pools = {a: rng.sample(lexicon(a, kind), min(config.values_per_attribute,
                                                     len(lexicon(a, kind))))
                 for a in KINDS[kind]}
        for i, name in enumerate(names):
            facts = {a: rng.choice(pools[a]) for a in KINDS[kind]}
            entities.append(Entity(f"{kind[0]}{i:03d}", kind, name, name.split()[0], facts))
    return World(entities)


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class BenchPrompt:
    """A prompt, the entity it is about and the attributes it asks for."""

    id: str
    entity: str
    asked: tuple[str, ...]
    text: str
    split: str  # "train" or "test"

    def row(self, world: World) -> dict[str, Any]:
        """A prompts-file row: the prompt and what the gold judge needs to score answers.

        The prompt is one user chat message, so that every model renders it with its chat
        template (``chat_template=auto`` everywhere in editalign).
        """
        entity = world.by_id[self.entity]
        return {"id": self.id, "prompt": [{"role": "user", "content": self.text}],
                "split": self.split,
                "bench": {"entity": entity.id, "kind": entity.kind, "name": entity.name,
                          "short": entity.short, "facts": dict(entity.facts),
                          "asked": list(self.asked)}}


def build_prompts(world: World, config: BenchConfig) -> list[BenchPrompt]:
    rng = random.Random(f"prompts-{config.seed}")
    items: list[tuple[str, tuple[str, ...], str]] = []
    for entity in world.entities:
        attributes = KINDS[entity.kind]
        for template in rng.sample(ABOUT_PROMPTS, config.about_prompts_per_entity):
            items.append((entity.id, attributes, template.format(name=entity.name)))
        for attribute in attributes:
            for template in rng.sample(QUESTION_PROMPTS[attribute],
                                       config.questions_per_attribute):
                items.append((entity.id, (attribute,), template.format(name=entity.name)))
    order = list(range(len(items)))
    rng.shuffle(order)
    n_test = round(config.test_fraction * len(items))
    test = set(order[:n_test])
    return [BenchPrompt(f"q{i:05d}", e, asked, text, "test" if i in test else "train")
            for i, (e, asked, text) in enumerate(items)]


# --------------------------------------------------------------------------- responses


@dataclass
class ErrorSpan:
    """One planted error: its kind, where it sits in the noisy text, and the fix."""

    kind: str  # wrong_value | hedge | filler
    start: int
    end: int
    text: str  # the erroneous text at [start, end)
    fix: str = ""  # what the reviser puts there ("" = delete)
    attribute: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class NoisyResponse:
    text: str
    clean: str
    errors: list[ErrorSpan] = field(default_factory=list)
    stated: tuple[str, ...] = ()  # attributes stated (one sentence each)


def _wrong_value(attribute: str, kind: str, right: str, rng: random.Random) -> str:
    return rng.choice([v for v in lexicon(attribute, kind) if v != right])


def render_response(entity: Entity, asked: Sequence[str], rng: random.Random,
                    config: BenchConfig, *, noisy: bool = True) -> NoisyResponse:
    """One response to a prompt asking ``asked``, with errors at ``config``'s rates.

    Sentences come in a random order with random templates; ``noisy=False`` gives a
    response without errors (``clean`` is always the error-free version of ``text``).
    """
    attributes = list(asked)
    if len(attributes) > 1:
        rng.shuffle(attributes)
    # Pieces: (noisy text, clean text, error or None); concatenated in order.
    pieces: list[tuple[str, str, ErrorSpan | None]] = []
    for i, attribute in enumerate(attributes):
        name = entity.name
        if i > 0 and entity.short != entity.name and rng.random() < config.short_name_rate:
            name = entity.short
        template = rng.choice(SENTENCE_TEMPLATES[attribute])
        right = entity.facts[attribute]
        value = right
        wrong = noisy and rng.random() < config.wrong_value_rate
        if wrong:
            value = _wrong_value(attribute, entity.kind, right, rng)
        before, after = template.split("{value}")
        before, after = before.format(name=name), after.format(name=name)
        assert after.endswith(".")
        if i > 0:
            pieces.append((" ", " ", None))
        pieces.append((before, before, None))
        error = ErrorSpan("wrong_value", 0, 0, value, right, attribute) if wrong else None
        pieces.append((value, right, error))
        pieces.append((after[:-1], after[:-1], None))
        if noisy and rng.random() < config.hedge_rate:
            hedge = rng.choice(HEDGES)
            pieces.append((hedge, "", ErrorSpan("hedge", 0, 0, hedge)))
        pieces.append((".", ".", None))
    if noisy and rng.random() < config.filler_rate:
        filler = rng.choice(FILLERS)
        boundaries = [0] + [j + 1 for j, (t, _, e) in enumerate(pieces) if t == "." and not e]
        at = rng.choice(boundaries)
        if at == 0:
            # The space after a leading filler belongs to the error (deleting it restores).
            insert = [(filler + " ", "", ErrorSpan("filler", 0, 0, filler + " "))]
        else:
            insert = [(" " + filler, "", ErrorSpan("filler", 0, 0, " " + filler))]
        pieces[at:at] = insert
    text, clean, errors = "", "", []
    for noisy_text, clean_text, error in pieces:
        if error is not None:
            error.start, error.end = len(text), len(text) + len(noisy_text)
            errors.append(error)
        text += noisy_text
        clean += clean_text
    return NoisyResponse(text, clean, errors, tuple(attributes))
