"""Plate formats: the readings that decoding may give (ctc.format_decode obeys them).

A format is one or more alternatives separated by "|", each a sequence of atoms: a character
of the alphabet, "." (any of them) or a class in brackets of characters and ranges ("[A-Z]",
"[0-9A-F]"), each followed by an optional count "{n}" or "{m,n}". For example
"[A-Z]{2}[0-9]{3,4}" (two letters, then three or four digits) or "[0-9]{5}|[A-Z][0-9]{4}".
Pure Python and numpy: the format becomes masks that the decoder takes as constants.
"""

import itertools
import re
from typing import Sequence

import numpy as np

MAX_ALTERNATIVES = 64  # after the counts are expanded: each is searched beside the others
_ATOM = re.compile(r"(\[(?P<members>[^\]]*)\]|(?P<any>\.)|(?P<char>[^\[\]{}|.]))"
                   r"(\{(?P<low>\d+)(,(?P<high>\d+))?\})?")


def _members(text: str, alphabet: str, pattern: str) -> set[int]:
    """The alphabet indices of a bracket class's characters and ranges."""
    chars, i = set(), 0
    while i < len(text):
        if i + 2 < len(text) and text[i + 1] == "-":
            low, high = text[i], text[i + 2]
            if low > high:
                raise ValueError(f"plate format {pattern!r}: the range {low}-{high} is empty")
            chars |= {c for c in alphabet if low <= c <= high}
            i += 3
        else:
            chars.add(text[i])
            i += 1
    unknown = sorted(c for c in chars if c not in alphabet)
    if unknown:
        raise ValueError(f"plate format {pattern!r}: {''.join(unknown)!r} not in the "
                         f"alphabet {alphabet!r}")
    return {alphabet.index(c) for c in chars}


def _alternative(text: str, alphabet: str, pattern: str) -> list[list[set[int]]]:
    """One alternative's readings, each a list of per-place sets of alphabet indices."""
    atoms, at = [], 0
    while at < len(text):
        match = _ATOM.match(text, at)
        if not match:
            raise ValueError(f"plate format {pattern!r}: cannot read {text[at:]!r}")
        if match["members"] is not None:
            members = _members(match["members"], alphabet, pattern)
        elif match["any"]:
            members = set(range(len(alphabet)))
        else:
            members = _members(match["char"], alphabet, pattern)
        if not members:
            raise ValueError(f"plate format {pattern!r}: [{match['members']}] has no "
                             f"character of the alphabet {alphabet!r}")
        low = int(match["low"] or 1)
        high = int(match["high"] or low)
        if high < low:
            raise ValueError(f"plate format {pattern!r}: the count {{{low},{high}}} is empty")
        atoms.append((members, range(low, high + 1)))
        at = match.end()
    if not atoms:
        raise ValueError(f"plate format {pattern!r}: an empty alternative")
    return [[members for (members, _), count in zip(atoms, counts) for _ in range(count)]
            for counts in itertools.product(*(counts for _, counts in atoms))]


def masks(pattern: str, alphabet: str) -> np.ndarray:
    """The format as ctc.format_decode's masks.

    Returns:
      bool [A, N, len(alphabet)]: alternative a (its counts expanded) reads class c at place k
      where [a, k, c]; N is the longest alternative's length, shorter ones end in all-False
      places.
    Raises:
      ValueError: a one-line message, for a format that cannot be read, a character outside
        the alphabet, an empty class, count or alternative, or too many alternatives.
    """
    readings = [reading for text in pattern.split("|")
                for reading in _alternative(text, alphabet, pattern)]
    if len(readings) > MAX_ALTERNATIVES:
        raise ValueError(f"plate format {pattern!r}: {len(readings)} alternatives once its "
                         f"counts are expanded, more than {MAX_ALTERNATIVES}")
    if max(map(len, readings)) == 0:
        raise ValueError(f"plate format {pattern!r} reads nothing")
    result = np.zeros([len(readings), max(map(len, readings)), len(alphabet)], bool)
    for a, reading in enumerate(readings):
        for k, members in enumerate(reading):
            result[a, k, sorted(members)] = True
    return result


def exactly(length: int, alphabet_size: int) -> np.ndarray:
    """The format "any `length` characters" ("." repeated), as masks."""
    return any_length([length], alphabet_size)


def any_length(lengths: Sequence[int], alphabet_size: int) -> np.ndarray:
    """The format "any characters, as many as one of `lengths`" (".{4}|.{5}|..."), as masks."""
    places = np.arange(max(lengths))
    return np.stack([np.broadcast_to((places < length)[:, None], (len(places), alphabet_size))
                     for length in sorted(set(lengths))])


def for_model(pattern: str, alphabet: str, lengths: Sequence[int]) -> np.ndarray:
    """What a model's exports decode: the format `pattern`, or with "" any characters of the
    alphabet, as many as one of the records' plate lengths (records.plate_lengths), as
    masks() returns them."""
    return masks(pattern, alphabet) if pattern else any_length(lengths, len(alphabet))
