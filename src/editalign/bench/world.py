"""The benchmark's world: seeded entities with attributes, and prompts about them.

Everything here is plain Python and deterministic from :class:`BenchConfig` (its ``seed``
included): the same config always yields the same world, prompts and noisy data, on any
machine. Attribute values come from disjoint single-word lexicons, so any word of a
response that is a value names its attribute; this is what lets the gold judge and the
reviser read free model output (see :mod:`editalign.bench.judge`). The lexicons, sentence
templates and error phrasings live here too; :mod:`editalign.bench.responses` renders
responses from them, with their planted errors.

``BenchConfig(task="grounded")`` is the second task: every prompt carries the entity's facts
as a card (varied formats and orders; in some prompts a second entity's card as a
distractor), held-out prompts are about entities no training prompt mentions, and the
value errors are context errors (a value copied from the distractor, a value found in no
card, a value of the card under the wrong attribute). People and animals there also have a
``birthplace``, a second town, so a card value can be stated under the wrong attribute.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
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


# The grounded task's entities: a birthplace beside the home town (both from CITIES), so a
# town of the card can be stated under the wrong one of the two.
GROUNDED_KINDS: dict[str, tuple[str, ...]] = {
    "person": ("job", "city", "birthplace", "age", "colour"),
    "animal": ("species", "city", "birthplace", "age", "colour"),
}
# A town mention is read as the birthplace when one of these words precedes it in its
# sentence (after any earlier town mention), else as the home town; only for entities that
# have a birthplace (the grounded task).
BIRTHPLACE_CUES = ("born", "birthplace")
TASKS = ("facts", "grounded")


def lexicon(attribute: str, kind: str | None = None) -> tuple[str, ...]:
    """All values an attribute can take (ages depend on the kind of entity)."""
    if attribute == "age":
        return ANIMAL_AGES if kind == "animal" else PERSON_AGES
    return {"job": JOBS, "city": CITIES, "birthplace": CITIES, "colour": COLOURS,
            "species": SPECIES}[attribute]


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

# The grounded task's phrasings: the first task's plus the birthplace (kept apart so that the
# first task's tokenizer corpus, and so its numbers, stay as they were).
GROUNDED_SENTENCE_TEMPLATES: dict[str, tuple[str, ...]] = {
    **SENTENCE_TEMPLATES,
    "birthplace": ("{name} was born in {value}.", "{name}'s birthplace is {value}.",
                   "{name} was born in the town of {value}."),
}
GROUNDED_QUESTION_PROMPTS: dict[str, tuple[str, ...]] = {
    **QUESTION_PROMPTS,
    "birthplace": ("Where was {name} born?", "What is {name}'s birthplace?"),
}
# Cards: the facts an answer must be read from. Labels per format; "passage" writes the
# facts as sentences of the response templates instead.
CARD_FORMATS = ("lines", "inline", "record", "passage")
CARD_LABELS: dict[str, dict[str, str]] = {
    "lines": {"job": "Job", "species": "Species", "city": "Lives in", "birthplace": "Born in",
              "age": "Age", "colour": "Favourite colour"},
    "inline": {"job": "occupation", "species": "animal", "city": "home town",
               "birthplace": "birthplace", "age": "age", "colour": "colour"},
    "record": {"job": "job", "species": "species", "city": "home", "birthplace": "birthplace",
               "age": "age", "colour": "colour"},
}
# The context errors of the grounded task (each replaces a value of the response).
GROUNDED_VALUE_ERRORS = ("distractor_value", "invented_value", "swapped_value")


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
    card_labels = [label for labels in CARD_LABELS.values() for label in labels.values()]
    template_words = {w.lower() for texts in (*GROUNDED_SENTENCE_TEMPLATES.values(),
                                              *GROUNDED_QUESTION_PROMPTS.values(), HEDGES,
                                              FILLERS, card_labels, ("Name",))
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
    # "facts": the first task (facts learned in training); "grounded": facts on a card in
    # every prompt, held-out prompts about unseen entities (``test_fraction`` of the entities
    # are held out), context errors instead of ``wrong_value_rate``.
    task: str = "facts"
    distractor_rate: float = 0.5  # grounded: prompts with a second entity's card
    distractor_value_rate: float = 0.15  # per stated attribute, in prompts with a distractor
    invented_value_rate: float = 0.05  # per stated attribute: a value in no card
    swapped_value_rate: float = 0.15  # per stated town: the card's other town

    def __post_init__(self) -> None:
        for name in ("wrong_value_rate", "hedge_rate", "filler_rate", "short_name_rate",
                     "test_fraction", "distractor_rate", "distractor_value_rate",
                     "invented_value_rate", "swapped_value_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        total = self.distractor_value_rate + self.invented_value_rate + self.swapped_value_rate
        if total > 1.0:
            raise ValueError("distractor_value_rate + invented_value_rate + swapped_value_rate "
                             f"must be <= 1, got {total}")
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

    @property
    def kinds(self) -> dict[str, tuple[str, ...]]:
        """The attributes of each kind of entity in this task."""
        return GROUNDED_KINDS if self.task == "grounded" else KINDS

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.task == "facts":  # the first task's config.json stays as it always was
            for name in GROUNDED_FIELDS:
                del data[name]
        return data


GROUNDED_FIELDS = ("task", "distractor_rate", "distractor_value_rate", "invented_value_rate",
                   "swapped_value_rate")


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

    def entity_asked(self, text: str) -> Entity | None:
        """The entity a prompt asks about: the one whose full name occurs last (a grounded
        prompt ends with its question, after the cards), or None."""
        found: tuple[int, Entity] | None = None
        for entity in self._by_name:
            for m in re.finditer(rf"\b{re.escape(entity.name)}\b", text):
                if found is None or m.start() > found[0]:
                    found = (m.start(), entity)
        return found[1] if found else None

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
    kinds = config.kinds
    for kind, names in (("person", people), ("animal", pets)):
        pools = {a: rng.sample(lexicon(a, kind), min(config.values_per_attribute,
                                                     len(lexicon(a, kind))))
                 for a in kinds[kind]}
        for i, name in enumerate(names):
            # The grounded task's facts are drawn per prompt, on its cards: a world of names.
            facts = {} if config.task == "grounded" else \
                {a: rng.choice(pools[a]) for a in kinds[kind]}
            entities.append(Entity(f"{kind[0]}{i:03d}", kind, name, name.split()[0], facts))
    return World(entities)


def draw_facts(pools: dict[str, Sequence[str]], rng: random.Random) -> dict[str, str]:
    """One value per attribute from its pool; two different towns when there are two (so that
    stating one under the other is an error)."""
    facts = {a: rng.choice(pool) for a, pool in pools.items()}
    while "birthplace" in facts and facts["birthplace"] == facts["city"]:
        facts["birthplace"] = rng.choice(pools["birthplace"])
    return facts


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class BenchPrompt:
    """A prompt, the entity it is about and the attributes it asks for."""

    id: str
    entity: str
    asked: tuple[str, ...]
    text: str
    split: str  # "train" or "test"
    task: str = "facts"
    distractor: str | None = None  # grounded: the entity of the distractor card, if any
    # grounded: the facts of this prompt's cards ((attribute, value) pairs; the first task's
    # facts are the world's)
    facts: tuple[tuple[str, str], ...] = ()
    distractor_facts: tuple[tuple[str, str], ...] = ()

    def shown(self, world: World) -> tuple[Entity, Entity | None]:
        """The entity and the distractor (None without one) with this prompt's facts."""
        entity = world.by_id[self.entity]
        if self.facts:
            entity = replace(entity, facts=dict(self.facts))
        other = world.by_id[self.distractor] if self.distractor else None
        if other is not None and self.distractor_facts:
            other = replace(other, facts=dict(self.distractor_facts))
        return entity, other

    def row(self, world: World) -> dict[str, Any]:
        """A prompts-file row: the prompt and what the gold judge needs to score answers.

        The prompt is one user chat message, so that every model renders it with its chat
        template (``chat_template=auto`` everywhere in editalign). A grounded row also names
        the distractor card's entity and facts (the reviser tells error kinds apart by it).
        """
        entity, other = self.shown(world)
        bench: dict[str, Any] = {"entity": entity.id, "kind": entity.kind, "name": entity.name,
                                 "short": entity.short, "facts": dict(entity.facts),
                                 "asked": list(self.asked)}
        if self.task == "grounded":
            bench["task"] = "grounded"
            bench["distractor"] = None if other is None else {
                "entity": other.id, "name": other.name, "facts": dict(other.facts)}
        return {"id": self.id, "prompt": [{"role": "user", "content": self.text}],
                "split": self.split, "bench": bench}


def build_prompts(world: World, config: BenchConfig) -> list[BenchPrompt]:
    if config.task == "grounded":
        return build_grounded_prompts(world, config)
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


# --------------------------------------------------------------------------- grounded prompts


def render_card(entity: Entity, card_format: str, order: Sequence[str],
                rng: random.Random) -> str:
    """The entity's facts in ``order`` as a card of ``card_format`` (see CARD_FORMATS);
    ``rng`` picks a passage's sentence templates and short names."""
    facts = entity.facts
    if card_format not in CARD_FORMATS:
        raise ValueError(f"unknown card format {card_format!r}; choose from {CARD_FORMATS}")
    if card_format == "passage":
        sentences = []
        for i, attribute in enumerate(order):
            name = entity.short if i > 0 and rng.random() < 0.5 else entity.name
            template = rng.choice(GROUNDED_SENTENCE_TEMPLATES[attribute])
            sentences.append(template.format(name=name, value=facts[attribute]))
        return " ".join(sentences)
    labels = CARD_LABELS[card_format]
    if card_format == "lines":
        return "\n".join([f"Name: {entity.name}", *(f"{labels[a]}: {facts[a]}" for a in order)])
    if card_format == "inline":
        return f"{entity.name} ({'; '.join(f'{labels[a]}: {facts[a]}' for a in order)})"
    return f"[{entity.name}] " + ", ".join(f"{labels[a]} = {facts[a]}" for a in order)


def _same_lexicon(attribute: str, attributes: Sequence[str]) -> list[str]:
    """The attributes whose values come from ``attribute``'s lexicon (itself included)."""
    towns = ("city", "birthplace")
    return [a for a in attributes if a == attribute or (a in towns and attribute in towns)]


def can_distract(distractor: Entity, entity: Entity) -> bool:
    """Whether ``distractor``'s card is a clean distractor for ``entity``: none of its values
    is a value of ``entity``'s for an attribute of the same lexicon, so a value copied from
    it is always wrong and always tells which card it came from."""
    if distractor.kind != entity.kind or distractor.id == entity.id:
        return False
    attributes = list(entity.facts)
    return all(distractor.facts[a] != entity.facts[b]
               for a in attributes for b in _same_lexicon(a, attributes))


def build_grounded_prompts(world: World, config: BenchConfig) -> list[BenchPrompt]:
    """Prompts that carry the facts: card(s) of varied format and order, then the question.

    Every prompt draws its own facts for its entity (and its distractor), from pools of
    ``values_per_attribute`` values: a card is the only place the answer is, in training
    too, so a policy cannot answer from memorised names. ``test_fraction`` of each kind's
    entities are held out: every prompt about them is a test prompt, and no training prompt
    mentions them (not even as a distractor).
    """
    rng = random.Random(f"grounded-prompts-{config.seed}")
    pools = {kind: {a: rng.sample(lexicon(a, kind), min(config.values_per_attribute,
                                                        len(lexicon(a, kind))))
                    for a in attributes}
             for kind, attributes in config.kinds.items()}
    held_out: set[str] = set()
    for kind in config.kinds:
        entities = [e for e in world.entities if e.kind == kind]
        held_out.update(e.id for e in rng.sample(entities, round(config.test_fraction
                                                                 * len(entities))))
    prompts = []
    for named in world.entities:
        attributes = config.kinds[named.kind]
        split = "test" if named.id in held_out else "train"
        asks = [(attributes, t) for t in rng.sample(ABOUT_PROMPTS, config.about_prompts_per_entity)]
        for attribute in attributes:
            asks += [((attribute,), t) for t in rng.sample(GROUNDED_QUESTION_PROMPTS[attribute],
                                                          config.questions_per_attribute)]
        for asked, template in asks:
            entity = replace(named, facts=draw_facts(pools[named.kind], rng))
            distractor = None
            if rng.random() < config.distractor_rate:
                pool = [e for e in world.entities if e.kind == entity.kind and e.id != entity.id
                        and (split == "test" or e.id not in held_out)]
                if pool:
                    distractor = rng.choice(pool)
                    for _ in range(100):  # facts that never coincide with the entity's
                        distractor = replace(distractor,
                                             facts=draw_facts(pools[named.kind], rng))
                        if can_distract(distractor, entity):
                            break
                    else:
                        distractor = None
            card_format = rng.choice(CARD_FORMATS)
            cards = []
            for shown in (entity, distractor):
                if shown is not None:
                    order = list(attributes)
                    rng.shuffle(order)
                    cards.append(render_card(shown, card_format, order, rng))
            if len(cards) == 2 and rng.random() < 0.5:
                cards.reverse()
            text = "\n\n".join([*cards, template.format(name=entity.name)])
            prompts.append(BenchPrompt(
                f"q{len(prompts):05d}", entity.id, asked, text, split, "grounded",
                distractor.id if distractor else None, tuple(entity.facts.items()),
                tuple(distractor.facts.items()) if distractor else ()))
    return prompts


def grounded_value_error(entity: Entity, distractor: Entity | None, config: BenchConfig
                         ) -> Callable[[str, random.Random], tuple[str, str] | None]:
    """The grounded task's value errors for one prompt, for
    :func:`~editalign.bench.responses.render_response`.

    Per stated attribute, one uniform draw picks at most one error, each at its configured
    rate: the distractor card's value of the attribute (only when there is a distractor), a
    value found in no card of the prompt, or the entity's other town (only for towns).
    """

    def draw(attribute: str, rng: random.Random) -> tuple[str, str] | None:
        u = rng.random()
        if distractor is not None:
            if u < config.distractor_value_rate:
                return "distractor_value", distractor.facts[attribute]
            u -= config.distractor_value_rate
        if u < config.invented_value_rate:
            shown = set(entity.facts.values()) | set(distractor.facts.values() if distractor
                                                     else ())
            return "invented_value", rng.choice(
                [v for v in lexicon(attribute, entity.kind) if v not in shown])
        u -= config.invented_value_rate
        others = [a for a in _same_lexicon(attribute, list(entity.facts)) if a != attribute]
        if others and u < config.swapped_value_rate:
            return "swapped_value", entity.facts[others[0]]
        return None

    return draw
