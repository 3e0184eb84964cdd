"""Built-in samples for every GLUE task: small, generated, and learnable by a tiny model.

They let the whole pipeline (teacher, distillation, pruning, tables) run in minutes on a CPU
with no download. Each task keeps its real shape (one sentence or a pair, two or three classes,
a 0..5 score for STS-B), and its label follows from simple lexical cues:

  sst2  positive or negative sentiment words
  cola  well formed, or a missing or misplaced verb, or a modal with a past form
  mnli  the hypothesis is a part of the premise / adds a new fact / negates it
  qnli  the sentence answers the question, or is about other actors and things
  qqp   the same question in other words, or a question about other things
  mrpc  the same statement rephrased, or one about other actors and things
  stsb  5 x the fraction of the content words the two sentences share
  rte   the hypothesis is a clause of the premise, or negates it or adds a new fact
  wnli  'it' resolved to the thing the premise talks about (right) or to the person (wrong)

Text that shares no content with its partner takes its words from a second vocabulary (animals,
food, the countryside) instead of the first (people, objects, the town). Pure word overlap between
random words turned out too hard for a 2-layer, 64-wide BERT to pick up in a few hundred steps
from 640 examples; words from a different domain make "different content" a lexical cue.

Everything comes from one `random.Random` per task, seeded from a sha256 of the task name, so the
output is the same on every call and every machine. Change anything here and bump SAMPLES_VERSION:
it is part of the data fingerprint that names cached teachers and tokenized data.
"""
import copy
import hashlib
import random

from harness.tasks import STSB_MAX_SCORE, Task

SAMPLES_VERSION = 1
TRAIN_SIZE = 640
DEV_SIZE = 160
SPLITS = ('train', 'dev')

# Two vocabularies with the same slots. A slot's verbs are (base form, past form) pairs; none has
# a past form that is also a base form ('found', 'saw'), so CoLA's "can + past form" is always wrong.
TOWN = {
    'actor': ('teacher', 'doctor', 'farmer', 'student', 'artist', 'driver', 'singer', 'baker', 'pilot',
              'nurse', 'writer', 'lawyer', 'soldier', 'king', 'queen', 'captain', 'chef'),
    'verb': (('watch', 'watched'), ('break', 'broke'), ('steal', 'stole'), ('buy', 'bought'),
             ('take', 'took'), ('move', 'moved'), ('open', 'opened'), ('carry', 'carried'),
             ('wash', 'washed'), ('paint', 'painted'), ('sell', 'sold'), ('hold', 'held'),
             ('keep', 'kept'), ('push', 'pushed'), ('pull', 'pulled'), ('clean', 'cleaned'),
             ('fix', 'fixed'), ('drop', 'dropped')),
    'adjective': ('big', 'small', 'old', 'new', 'red', 'blue', 'green', 'white', 'black', 'brown',
                  'little'),
    'thing': ('book', 'car', 'ball', 'chair', 'table', 'letter', 'phone', 'box', 'door', 'window',
              'bottle', 'hat', 'key', 'bag', 'lamp', 'boat', 'bike', 'coat', 'cup'),
    'place': ('park', 'school', 'garden', 'market', 'station', 'library', 'church', 'city', 'village',
              'kitchen', 'office', 'hospital', 'museum'),
}
COUNTRY = {
    'actor': ('dog', 'cat', 'horse', 'bird', 'rabbit', 'tiger', 'lion', 'mouse', 'cow', 'sheep',
              'wolf', 'bear', 'fox', 'duck', 'goat'),
    'verb': (('eat', 'ate'), ('smell', 'smelled'), ('chew', 'chewed'), ('hide', 'hid'),
             ('catch', 'caught'), ('swallow', 'swallowed'), ('taste', 'tasted'), ('bury', 'buried'),
             ('lick', 'licked'), ('sniff', 'sniffed')),
    'adjective': ('sweet', 'sour', 'fresh', 'hot', 'cold', 'dry', 'soft', 'raw', 'ripe', 'spicy',
                  'salty'),
    'thing': ('bread', 'apple', 'cheese', 'soup', 'pizza', 'rice', 'egg', 'banana', 'cookie',
              'sandwich', 'carrot', 'orange', 'pie', 'lemon'),
    'place': ('forest', 'river', 'beach', 'mountain', 'lake', 'field', 'island', 'desert', 'valley',
              'hill'),
}
SLOTS = tuple(TOWN)
DAYS = ('monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday')
FEELINGS = ('happy', 'hungry', 'tired', 'angry', 'sad', 'afraid', 'rich', 'famous', 'sick', 'proud')
PROPERTIES = ('heavy', 'broken', 'dirty', 'wet', 'cheap', 'empty', 'expensive', 'light')
MODALS = ('will', 'can', 'should', 'could')
# Paraphrases swap these; words without an entry stay as they are.
SYNONYMS = {'big': 'large', 'small': 'little', 'little': 'small', 'old': 'ancient', 'new': 'modern',
            'bought': 'purchased', 'took': 'grabbed', 'fixed': 'repaired', 'sold': 'traded'}

FILM_WORDS = ('film', 'movie', 'story', 'plot', 'script', 'acting', 'cast', 'ending', 'music',
              'performance', 'show', 'drama', 'comedy')
INTENSIFIERS = ('very', 'really', 'quite', 'truly', 'so', 'rather', 'pretty')
POSITIVE = ('good', 'great', 'wonderful', 'excellent', 'beautiful', 'amazing', 'brilliant', 'lovely',
            'fantastic', 'delightful', 'charming', 'pleasant', 'superb', 'perfect', 'enjoyable',
            'touching', 'funny', 'clever', 'moving', 'fresh')
NEGATIVE = ('bad', 'terrible', 'awful', 'horrible', 'boring', 'dull', 'ugly', 'poor', 'weak',
            'painful', 'disappointing', 'stupid', 'annoying', 'bland', 'messy', 'silly', 'pointless',
            'clumsy')


class _Event:
    """Who did what to which thing, where and when: what most templates talk about."""

    def __init__(self, rng: random.Random):
        self.actor = rng.choice(TOWN['actor'])
        self.base, self.past = rng.choice(TOWN['verb'])
        self.adjective = rng.choice(TOWN['adjective'])
        self.thing = rng.choice(TOWN['thing'])
        self.place = rng.choice(TOWN['place'])
        self.day = rng.choice(DAYS)

    def with_country_words(self, rng: random.Random, slots) -> '_Event':
        """A copy whose `slots` hold words from COUNTRY: the same event with that content changed."""
        other = copy.copy(self)
        for slot in slots:
            if slot == 'verb':
                other.base, other.past = rng.choice(COUNTRY['verb'])
            else:
                setattr(other, slot, rng.choice(COUNTRY[slot]))
        return other

    def sentence(self) -> str:
        return f'the {self.actor} {self.past} the {self.adjective} {self.thing} in the {self.place} .'


def _sst2(rng, label):
    adjective, second = rng.sample(POSITIVE if label == 1 else NEGATIVE, 2)
    film, other_film = rng.sample(FILM_WORDS, 2)
    very = rng.choice(INTENSIFIERS)
    return rng.choice([
        f'the {film} was {adjective} .',
        f'a {adjective} {film} with {second} {other_film} .',
        f'i found the {film} {very} {adjective} .',
        f'{very} {adjective} {film} , and the {other_film} is {second} too .',
        f'the {film} is {adjective} and {second} .',
    ]), ''


def _cola(rng, label):
    e, modal = _Event(rng), rng.choice(MODALS)
    if label == 1:
        return rng.choice([
            e.sentence(),
            f'the {e.adjective} {e.actor} {e.past} the {e.thing} .',
            f'the {e.actor} {modal} {e.base} the {e.adjective} {e.thing} .',
        ]), ''
    return rng.choice([
        f'the {e.adjective} {e.actor} the {e.thing} in the {e.place} .',    # no verb
        f'the {e.actor} {modal} {e.past} the {e.adjective} {e.thing} .',    # modal + past form
        f'{e.past} the {e.adjective} {e.actor} the {e.thing} .',            # verb first
        f'the {e.actor} the {e.adjective} {e.thing} {e.past} .',            # verb last
    ]), ''


def _mnli(rng, label):
    e = _Event(rng)
    if label == 0:      # entailment: a part of what the premise says
        hypothesis = rng.choice([
            f'the {e.actor} {e.past} the {e.thing} .',
            f'the {e.actor} was in the {e.place} .',
            f'the {e.thing} was in the {e.place} .',
        ])
    elif label == 1:    # neutral: something the premise does not say
        hypothesis = rng.choice([
            f'the {e.actor} was {rng.choice(FEELINGS)} .',
            f'the {e.actor} {e.past} the {e.thing} because it was {rng.choice(PROPERTIES)} .',
            f'the {e.actor} also {e.past} a {rng.choice(TOWN["thing"])} on {e.day} .',
        ])
    else:               # contradiction: the premise negated
        hypothesis = rng.choice([
            f'the {e.actor} did not {e.base} the {e.thing} .',
            f'the {e.actor} was never in the {e.place} .',
            f'nobody {e.past} the {e.thing} .',
        ])
    return e.sentence(), hypothesis


def _qnli(rng, label):
    e = _Event(rng)
    question = rng.choice([f'where did the {e.actor} {e.base} the {e.thing} ?',
                           f'when did the {e.actor} {e.base} the {e.thing} ?'])
    if label == 1:      # not_entailment: the sentence is about another actor and another thing
        e = e.with_country_words(rng, ('actor', 'verb', 'thing'))
    return question, rng.choice([
        f'on {e.day} , the {e.actor} {e.past} the {e.adjective} {e.thing} in the {e.place} .',
        f'in the {e.place} , the {e.actor} {e.past} the {e.adjective} {e.thing} on {e.day} .',
    ])


def _qqp(rng, label):
    e = _Event(rng)
    first = rng.choice([f'how do i {e.base} a {e.adjective} {e.thing} ?',
                        f'where can i {e.base} a {e.adjective} {e.thing} ?'])
    if label == 0:      # not_duplicate: doing something else to something else
        e = e.with_country_words(rng, ('verb', 'adjective', 'thing'))
    adjective = SYNONYMS.get(e.adjective, e.adjective)
    return first, rng.choice([
        f'what is the best way to {e.base} a {adjective} {e.thing} ?',
        f'how can i {e.base} a {e.thing} that is {adjective} ?',
        f'is there a good way to {e.base} a {adjective} {e.thing} ?',
    ])


def _mrpc(rng, label):
    e = _Event(rng)
    first = f'the {e.actor} {e.past} the {e.adjective} {e.thing} on {e.day} .'
    if label == 0:      # not_equivalent: another actor did something to another thing
        e = e.with_country_words(rng, ('actor', 'adjective', 'thing'))
    past = SYNONYMS.get(e.past, e.past) if rng.random() < 0.5 else e.past
    adjective = SYNONYMS.get(e.adjective, e.adjective)
    return first, rng.choice([
        f'on {e.day} , the {e.actor} {past} the {adjective} {e.thing} .',
        f'it was on {e.day} that the {e.actor} {past} the {adjective} {e.thing} .',
        f'the {e.actor} {past} a {adjective} {e.thing} on {e.day} .',
    ])


def _stsb(rng, label):
    """`label` is the number of the five content words the two sentences share."""
    e = _Event(rng)
    other = e.with_country_words(rng, rng.sample(SLOTS, len(SLOTS) - label))
    return e.sentence(), rng.choice([
        other.sentence(),
        f'in the {other.place} , the {other.actor} {other.past} the {other.adjective} {other.thing} .',
    ])


def _rte(rng, label):
    e, then = _Event(rng), _Event(rng)
    premise = (f'the {e.actor} {e.past} the {e.adjective} {e.thing} in the {e.place} , '
               f'and then the {then.actor} {then.past} a {then.thing} .')
    if label == 0:      # entailment: one of the two clauses
        hypothesis = rng.choice([f'the {e.actor} {e.past} the {e.thing} .',
                                 f'the {then.actor} {then.past} a {then.thing} .'])
    else:               # not_entailment: negated, or a fact the premise does not give
        hypothesis = rng.choice([f'the {e.actor} did not {e.base} the {e.thing} .',
                                 f'the {then.actor} never {then.past} a {then.thing} .',
                                 f'the {e.actor} was {rng.choice(FEELINGS)} .'])
    return premise, hypothesis


def _wnli(rng, label):
    e, property_ = _Event(rng), rng.choice(PROPERTIES)
    premise = f'the {e.actor} {e.past} the {e.thing} because it was {property_} .'
    # 'it' is the thing; reading it as the person is the wrong resolution
    subject = e.thing if label == 1 else e.actor
    return premise, f'the {subject} was {property_} .'


_GENERATORS = {'sst2': _sst2, 'cola': _cola, 'mnli': _mnli, 'qnli': _qnli, 'qqp': _qqp,
               'mrpc': _mrpc, 'stsb': _stsb, 'rte': _rte, 'wnli': _wnli}


def _seed(task: Task) -> int:
    # Python's hash() of a str changes between processes; sha256 does not.
    return int.from_bytes(hashlib.sha256(f'spd-bench samples {task.name}'.encode()).digest()[:8], 'big')


def _all_examples(task: Task) -> list[tuple]:
    """TRAIN_SIZE + DEV_SIZE distinct examples, classes balanced within each split."""
    rng = random.Random(_seed(task))
    # STS-B's classes are the number of shared content words, 0..5, turned into a 0..5 score.
    classes = len(SLOTS) + 1 if task.is_regression else task.num_labels
    examples, seen = [], set()
    for size in (TRAIN_SIZE, DEV_SIZE):
        wanted = [i % classes for i in range(size)]
        rng.shuffle(wanted)
        for label in wanted:
            # Draw again until the pair is new, so that no dev example is also a training example.
            while (texts := _GENERATORS[task.name](rng, label)) in seen:
                pass
            seen.add(texts)
            target = STSB_MAX_SCORE * label / len(SLOTS) if task.is_regression else label
            examples.append((*texts, target))
    return examples


def make_samples(task: Task, split: str) -> dict[str, list]:
    """{'text_a': [...], 'text_b': [...], 'label': [...]} of split 'train' or 'dev'.

    text_b is '' for one-sentence tasks; label is an int class id, or a float 0..5 for STS-B.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    examples = _all_examples(task)
    chosen = examples[:TRAIN_SIZE] if split == 'train' else examples[TRAIN_SIZE:]
    text_a, text_b, label = (list(column) for column in zip(*chosen))
    return {'text_a': text_a, 'text_b': text_b, 'label': label}
