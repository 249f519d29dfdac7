"""The code task families as data: what each function must do at each level, how to say it, a reference
solution, and how to draw its inputs. ``leanlm.eval.codetasks`` turns one entry into problems.

A family has three levels; a level is a ``Level`` of (training phrasings, held-out phrasings, reference
body). Phrasings are ``str.format`` templates over the family's ``params``; the reference body is a
``string.Template`` (``$k``) over the same params, so the constants of a problem (a divisor, a shift, the
words of a fizzbuzz rule) are drawn by the seed and baked into both. ``inputs`` draws one argument tuple;
``edges`` lists the edge cases (empty inputs, zero, negatives, ties) that every problem is tested on and
that the docstring never shows. Function names and wording are ours: ``tests/test_code_tasks.py`` checks
that no function name and no docstring line is shared with HumanEval.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Level:
    train: tuple[str, ...]
    heldout: tuple[str, ...]
    body: str                  # the reference body, indented four spaces, ``$name`` params


@dataclass(frozen=True)
class CodeFamily:
    name: str
    fn: str
    signature: str             # the argument list and return annotation, after the function name
    levels: dict[int, Level]
    params: Callable[[random.Random, int], dict]
    inputs: Callable[[random.Random, int, dict], tuple]
    edges: Callable[[int, dict], list[tuple]]


def _ints(rng: random.Random, level: int, lo: int = -20, hi: int = 40) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(3, 4 + 3 * level))]


def _word(rng: random.Random, lo: int = 1, hi: int = 7) -> str:
    return "".join(rng.choice("abcdefghijklmnoprstuy") for _ in range(rng.randint(lo, hi)))


def _sentence(rng: random.Random, level: int) -> str:
    return " ".join(_word(rng) for _ in range(rng.randint(1, 3 + 2 * level)))


# ------------------------------------------------------------------ integer conditions (list families)
_CONDS = (("divisible by {k}", "x % {k} == 0"), ("odd", "x % 2 == 1"), ("even", "x % 2 == 0"),
          ("greater than {t}", "x > {t}"), ("less than {u}", "x < {u}"), ("not divisible by {m}", "x % {m} != 0"))


def _cond_params(rng: random.Random, level: int) -> dict:
    picks = []
    for i in rng.sample(range(len(_CONDS)), len(_CONDS)):
        if len(picks) == level:
            break
        if {i, *picks} >= {1, 2}:          # odd and even together match nothing
            continue
        picks.append(i)
    k = rng.randint(2, 6)
    vals = {"k": k, "m": rng.choice([m for m in range(2, 8) if m != k]), "t": rng.randint(-5, 15),
            "u": rng.randint(16, 35)}
    text = " and ".join(_CONDS[i][0] for i in sorted(picks)).format(**vals)
    expr = " and ".join(f"({_CONDS[i][1]})" for i in sorted(picks)).format(**vals)
    return {"cond": text, "expr": expr, "v": rng.randint(-9, 9)}


def _list_in(rng, level, p):
    return (_ints(rng, level),)


def _list_edges(level, p):
    return [([],), ([0],), ([-7, -7, 14],)]


def _cond_family(name: str, fn: str, sig: str, train: tuple[str, ...], heldout: tuple[str, ...], body: str):
    lv = Level(train, heldout, body)
    return CodeFamily(name, fn, sig, {1: lv, 2: lv, 3: lv}, _cond_params, _list_in, _list_edges)


# ------------------------------------------------------------------ parameters of the other families
def _none(rng, level):
    return {}


def _shift(rng, level):
    return {"k": rng.randint(1, 25)}


def _size(rng, level):
    return {"k": rng.randint(2, 4)}


def _threshold(rng, level):
    return {"t": rng.randint(1, 6), "n": rng.randint(2, 4)}


def _fizz(rng, level):
    ds = sorted(rng.sample(range(2, 8), level))
    ws = rng.sample(["Fizz", "Buzz", "Bang", "Pop", "Zap", "Whirr", "Clank"], level)
    rules = ", ".join(f'"{w}" for multiples of {d}' for d, w in zip(ds, ws))
    return {"rules": rules, "pairs": repr(list(zip(ds, ws)))}


def _base(rng, level):
    return {"b": rng.randint(2, 9)}


def _text_in(rng, level, p):
    return (_sentence(rng, level),)


def _text_edges(level, p):
    return [("",), ("a",), ("ab ab",)]


def _run_in(rng, level, p):
    return ("".join(rng.choice("aab" if level == 1 else "aabbc") * rng.randint(1, 3) for _ in range(2 + 2 * level)),)


def _brackets_in(rng, level, p):
    pairs = ["()", "()[]", "()[]{}"][level - 1]
    s = []
    for _ in range(rng.randint(1, 3 + 2 * level)):
        o = rng.randrange(0, len(pairs), 2)
        s.append(pairs[o] + (rng.choice("xy") if level == 3 and rng.random() < 0.3 else "") + pairs[o + 1])
    s = "".join(s)
    if rng.random() < 0.5 and s:        # break it half the time
        i = rng.randrange(len(s))
        s = s[:i] + rng.choice(pairs) + s[i + 1:]
    return (s,)


def _nat_in(rng, level, p):
    return (rng.randint(0, 10 ** (2 + level)),)


def _two_lists_in(rng, level, p):
    return (_ints(rng, level, 0, 9), _ints(rng, level, 0, 9))


def _dicts_in(rng, level, p):
    keys = list("abcdefg")
    return ({k: rng.randint(0, 9) for k in rng.sample(keys, rng.randint(0, 4))},
            {k: rng.randint(0, 9) for k in rng.sample(keys, rng.randint(0, 4))})


def _inv_in(rng, level, p):
    keys = rng.sample(list("pqrstuvw"), rng.randint(1, 5))
    vals = rng.sample(range(10), len(keys)) if level == 1 else [rng.randint(0, 3) for _ in keys]
    return (dict(zip(keys, vals)),)


def _matrix_in(rng, level, p):
    r, c = rng.randint(1, 4), rng.randint(1, 4)
    if level == 3:
        c = r
    return ([[rng.randint(-5, 9) for _ in range(c)] for _ in range(r)],)


def _spaces_in(rng, level, p):
    seps = [" ", "  ", "   "] + (["\t", " \t "] if level >= 2 else [])
    words = [_word(rng) for _ in range(rng.randint(1, 5))]
    return (rng.choice(["", " ", "  "]) + "".join(w + rng.choice(seps) for w in words),)


def _words_in(rng, level, p):
    return (" ".join(_word(rng, 1, 9) for _ in range(rng.randint(1, 6))),)


def _small_nat_in(rng, level, p):
    return (rng.randint(1, 60),)


def _nat_edges(level, p):
    return [(0,), (1,), (10,)]


def _letters_in(rng, level, p):
    return ("".join(rng.choice(string.ascii_letters + " .!") for _ in range(rng.randint(1, 8 + 3 * level))),)


L = Level
FAMILIES: tuple[CodeFamily, ...] = (
    _cond_family("keep", "keep_matching", "xs: list[int]) -> list[int]",
                 ("Return the numbers of xs that are {cond}, keeping their order.",
                  "Build a new list with only the items of xs that are {cond}."),
                 ("Give back, in the original order, every element of xs which is {cond}.",),
                 "    return [x for x in xs if $expr]\n"),
    _cond_family("count", "tally_matching", "xs: list[int]) -> int",
                 ("Return how many numbers in xs are {cond}.", "Count the items of xs that are {cond}."),
                 ("Find the number of elements of xs which are {cond}.",),
                 "    return sum(1 for x in xs if $expr)\n"),
    _cond_family("sumif", "add_matching", "xs: list[int]) -> int",
                 ("Return the sum of the numbers in xs that are {cond} (0 if there are none).",
                  "Add up the items of xs that are {cond}; an empty sum is 0."),
                 ("Total every element of xs which is {cond}, giving 0 when nothing qualifies.",),
                 "    return sum(x for x in xs if $expr)\n"),
    _cond_family("firstidx", "locate_first", "xs: list[int]) -> int",
                 ("Return the index of the first number in xs that is {cond}, or -1 if there is none.",
                  "Find the position of the earliest item of xs that is {cond}; -1 when no item is."),
                 ("Give the smallest index i such that xs[i] is {cond}, and -1 if no such i exists.",),
                 "    for i, x in enumerate(xs):\n        if $expr:\n            return i\n    return -1\n"),
    _cond_family("replace", "swap_matching", "xs: list[int]) -> list[int]",
                 ("Return a copy of xs where every number that is {cond} is replaced by {v}.",
                  "Replace each item of xs that is {cond} with {v} and return the new list."),
                 ("Produce a new list like xs, except that elements which are {cond} become {v}.",),
                 "    return [$v if $expr else x for x in xs]\n"),
    CodeFamily("flipwords", "flip_word_order", "s: str) -> str", {
        1: L(("Return the words of s (separated by single spaces) in reverse order, joined by single spaces.",
              "Reverse the order of the space-separated words in s."),
             ("Give back s with its words, split on spaces, put last-to-first and joined with one space.",),
             "    return ' '.join(s.split(' ')[::-1]) if s else ''\n"),
        2: L(("Return the words of s in reverse order, each upper-cased, joined by single spaces.",
              "Reverse the order of the words of s and make every letter a capital."),
             ("Give back the space-separated words of s last-to-first, written entirely in capitals.",),
             "    return ' '.join(w.upper() for w in s.split(' ')[::-1]) if s else ''\n"),
        3: L(("Keep the words of s in order but reverse the letters of each word longer than {n} letters.",
              "Return s with every word of more than {n} letters spelled backwards; other words stay."),
             ("Spell backwards each word of s whose length exceeds {n}, leaving the rest and the order as they are.",),
             "    return ' '.join(w[::-1] if len(w) > $n else w for w in s.split(' ')) if s else ''\n"),
    }, _threshold, _text_in, _text_edges),
    CodeFamily("rle", "pack_runs", "s: str) -> str", {
        1: L(("Run-length encode s: write each run of equal characters as the character followed by the run length.",
              "Encode s by replacing every run of a repeated character with that character and its count."),
             ("Compress s into character-count pairs, one pair per maximal block of identical characters.",),
             "    out, i = [], 0\n    while i < len(s):\n        j = i\n        while j < len(s) and s[j] == s[i]:\n"
             "            j += 1\n        out.append(s[i] + str(j - i))\n        i = j\n    return ''.join(out)\n"),
        2: L(("Run-length encode s, writing the count after the character only when the run is longer than one.",
              "Encode runs of equal characters in s as the character plus its count, omitting counts of 1."),
             ("Compress s so a repeated block becomes character then count, while a lone character stays alone.",),
             "    out, i = [], 0\n    while i < len(s):\n        j = i\n        while j < len(s) and s[j] == s[i]:\n"
             "            j += 1\n        out.append(s[i] + (str(j - i) if j - i > 1 else ''))\n        i = j\n"
             "    return ''.join(out)\n"),
        3: L(("Return the runs of equal characters of s as a list of [character, length] pairs, in order.",
              "Split s into maximal runs of one repeated character and list each as [char, count]."),
             ("Describe s as an ordered list of two-item lists: the repeated character and how often it repeats.",),
             "    out = []\n    for c in s:\n        if out and out[-1][0] == c:\n            out[-1][1] += 1\n"
             "        else:\n            out.append([c, 1])\n    return out\n"),
    }, _none, _run_in, lambda lv, p: [("",), ("z",), ("zzzz",)]),
    CodeFamily("caesar", "rotate_letters", "s: str) -> str", {
        1: L(("Shift every lowercase letter of s forward by {k} places in the alphabet (z wraps to a); keep other characters.",
              "Apply a Caesar shift of {k} to the lowercase letters of s, wrapping past z, and leave the rest."),
             ("Move each small letter a-z of s {k} steps along the alphabet, cycling back to a after z.",),
             "    return ''.join(chr((ord(c) - 97 + $k) % 26 + 97) if 'a' <= c <= 'z' else c for c in s)\n"),
        2: L(("Shift every letter of s forward by {k} places, wrapping around, keeping upper and lower case.",
              "Caesar-shift all letters of s by {k}, capitals staying capitals; other characters are unchanged."),
             ("Advance each letter of s by {k} positions in its own case's alphabet, cycling; non-letters stay.",),
             "    def sh(c):\n        if 'a' <= c <= 'z':\n            return chr((ord(c) - 97 + $k) % 26 + 97)\n"
             "        if 'A' <= c <= 'Z':\n            return chr((ord(c) - 65 + $k) % 26 + 65)\n        return c\n"
             "    return ''.join(sh(c) for c in s)\n"),
        3: L(("Shift lowercase letters at even positions of s forward by {k} and those at odd positions back by {k}.",
              "For each lowercase letter s[i], rotate it +{k} in the alphabet when i is even and -{k} when i is odd."),
             ("Rotate s[i] by {k} letters forwards for even i and backwards for odd i, lowercase letters only.",),
             "    return ''.join(chr((ord(c) - 97 + ($k if i % 2 == 0 else -$k)) % 26 + 97) if 'a' <= c <= 'z' else c\n"
             "                   for i, c in enumerate(s))\n"),
    }, _shift, _letters_in, _text_edges),
    CodeFamily("vowels", "tally_vowel_letters", "s: str)", {
        1: L(("Return how many of the characters of s are lowercase vowels (a, e, i, o, u).",
              "Count the lowercase vowels a, e, i, o and u in s."),
             ("Find the number of positions of s holding one of the letters a e i o u (lowercase only).",),
             "    return sum(c in 'aeiou' for c in s)\n"),
        2: L(("Return how many vowels (a, e, i, o, u, in either case) s contains.",
              "Count the vowels of s, upper or lower case."),
             ("Find how many characters of s are vowels, ignoring case.",),
             "    return sum(c in 'aeiouAEIOU' for c in s)\n"),
        3: L(("Return a dict mapping each lowercase vowel that occurs in s (any case) to its number of occurrences.",
              "Count each vowel of s case-insensitively and return a dict vowel -> count, only for vowels present."),
             ("Build a mapping from the vowels appearing in s, lower-cased, to how often each appears.",),
             "    out = {}\n    for c in s.lower():\n        if c in 'aeiou':\n            out[c] = out.get(c, 0) + 1\n"
             "    return out\n"),
    }, _none, _letters_in, _text_edges),
    CodeFamily("fizz", "rule_words", "n: int) -> list[str]", {
        lv: L(("For each i from 1 to n, return the words of these rules that apply to i, concatenated in order ({rules}), "
               "or str(i) if none applies.",
               "Return a list of n strings: for i = 1..n join the words of the rules ({rules}) that divide i, "
               "else the number itself as text."),
              ("Produce, for every integer 1 through n, the concatenation of the matching rule words ({rules}), "
               "falling back to the digits of the integer.",),
              "    out = []\n    for i in range(1, n + 1):\n        w = ''.join(word for d, word in $pairs if i % d == 0)\n"
              "        out.append(w or str(i))\n    return out\n") for lv in (1, 2, 3)
    }, _fizz, lambda rng, lv, p: (rng.randint(1, 12 + 6 * lv),), lambda lv, p: [(0,), (1,)]),
    CodeFamily("digits", "digit_total", "n: int) -> int", {
        1: L(("Return the sum of the decimal digits of the non-negative integer n.",
              "Add up the digits of n (n >= 0)."),
             ("Compute the total of the base-ten digits making up the natural number n.",), 
             "    return sum(int(c) for c in str(n))\n"),
        2: L(("Return the sum of the decimal digits of n, ignoring its sign.",
              "Add up the digits of the integer n; a minus sign does not count."),
             ("Compute the digit total of |n| in base ten.",),
             "    return sum(int(c) for c in str(abs(n)))\n"),
        3: L(("Repeatedly replace the non-negative integer n by the sum of its digits until one digit is left; return it.",
              "Return the digital root of n >= 0: sum its digits again and again until a single digit remains."),
             ("Keep summing the decimal digits of n (n >= 0) until the value is below 10, then return that value.",),
             "    while n >= 10:\n        n = sum(int(c) for c in str(n))\n    return n\n"),
    }, _none, lambda rng, lv, p: (rng.randint(-10 ** 4, 10 ** 4) if lv == 2 else rng.randint(0, 10 ** (2 + lv)),),
        lambda lv, p: [(0,), (9,), (-99,)] if lv == 2 else [(0,), (9,), (10,)]),
    CodeFamily("brackets", "brackets_ok", "s: str) -> bool", {
        1: L(("Return True if the round brackets in s are balanced and properly nested, else False.",
              "Check that every '(' in s has a matching ')' after it and nothing closes too early."),
             ("Decide whether the parentheses of s pair up correctly, with no unmatched opener or closer.",),
             "    depth = 0\n    for c in s:\n        depth += (c == '(') - (c == ')')\n        if depth < 0:\n"
             "            return False\n    return depth == 0\n"),
        2: L(("Return True if the brackets () and [] in s are balanced and properly nested.",
              "Check that s's round and square brackets match up in the right order."),
             ("Decide whether every ( and [ of s is closed by its own kind of bracket, correctly nested.",),
             "    stack = []\n    for c in s:\n        if c in '([':\n            stack.append(c)\n        elif c in ')]':\n"
             "            if not stack or stack.pop() != '(['[')]'.index(c)]:\n                return False\n"
             "    return not stack\n"),
        3: L(("Return True if the brackets (), [] and {{}} in s are balanced and nested; other characters are ignored.",
              "Check that round, square and curly brackets in s match, skipping any other character."),
             ("Decide whether the three bracket kinds of s close in the right order, disregarding letters.",),
             "    stack = []\n    for c in s:\n        if c in '([{':\n            stack.append(c)\n        elif c in ')]}':\n"
             "            if not stack or stack.pop() != '([{'[')]}'.index(c)]:\n                return False\n"
             "    return not stack\n"),
    }, _none, _brackets_in, lambda lv, p: [("",), (")(",), ("((",)]),
    CodeFamily("dedupe", "drop_repeats", "xs: list[int]) -> list[int]", {
        1: L(("Return xs without duplicates, keeping the first occurrence of each value in order.",
              "Remove repeated values from xs; the first time a value appears it stays."),
             ("Give the distinct elements of xs in the order they first show up.",),
             "    seen, out = set(), []\n    for x in xs:\n        if x not in seen:\n            seen.add(x)\n"
             "            out.append(x)\n    return out\n"),
        2: L(("Return the values of xs that occur exactly once, in their original order.",
              "Keep only the items of xs that appear a single time in xs."),
             ("Give back the elements of xs whose count in xs is one, order preserved.",),
             "    return [x for x in xs if xs.count(x) == 1]\n"),
        3: L(("Return each value that occurs at least {n} times in xs, once, in the order of first appearance.",
              "List the values appearing {n} or more times in xs, each once, ordered by where they first appear."),
             ("Give the distinct elements of xs with at least {n} occurrences, by first occurrence.",),
             "    out = []\n    for x in xs:\n        if xs.count(x) >= $n and x not in out:\n            out.append(x)\n"
             "    return out\n"),
    }, _threshold, lambda rng, lv, p: (_ints(rng, lv, 0, 6),), lambda lv, p: [([],), ([1],), ([2, 2, 2, 2],)]),
    CodeFamily("chunks", "split_chunks", "xs: list[int])", {
        1: L(("Split xs into consecutive chunks of {k} items; the last chunk may be shorter. Return the list of chunks.",
              "Cut xs into pieces of length {k} (the final piece holds what is left)."),
             ("Group xs into sublists of {k} neighbouring elements, the remainder forming a last shorter group.",),
             "    return [xs[i:i + $k] for i in range(0, len(xs), $k)]\n"),
        2: L(("Split xs into consecutive chunks of exactly {k} items, dropping any incomplete last chunk.",
              "Cut xs into full pieces of length {k}; leftover items at the end are discarded."),
             ("Group xs into sublists of {k} neighbouring elements and throw away a short final group.",),
             "    return [xs[i:i + $k] for i in range(0, len(xs) - $k + 1, $k)]\n"),
        3: L(("Split xs into consecutive chunks of {k} items (the last may be shorter) and return the sum of each chunk.",
              "Return the list of sums of the pieces of length {k} of xs, the final piece holding what is left."),
             ("Group xs into runs of {k} neighbours, the remainder last, and give each group's total.",),
             "    return [sum(xs[i:i + $k]) for i in range(0, len(xs), $k)]\n"),
    }, _size, _list_in, lambda lv, p: [([],), ([5],)]),
    CodeFamily("rotate", "cycle_list", "xs: list[int]) -> list[int]", {
        1: L(("Return xs rotated left by {k} places (the first {k} items move to the end); k may exceed the length.",
              "Rotate xs to the left {k} times, wrapping around; an empty list stays empty."),
             ("Move the leading element of xs to the back, {k} times in a row, and return the result.",),
             "    if not xs:\n        return []\n    k = $k % len(xs)\n    return xs[k:] + xs[:k]\n"),
        2: L(("Return xs rotated right by {k} places (the last {k} items move to the front), wrapping around.",
              "Rotate xs to the right {k} times; an empty list stays empty."),
             ("Move the final element of xs to the front, {k} times in a row, and return the result.",),
             "    if not xs:\n        return []\n    k = $k % len(xs)\n    return xs[len(xs) - k:] + xs[:len(xs) - k]\n"),
        3: L(("Rotate xs left by as many places as the value of its first element (modulo the length; negative "
              "values rotate right); return [] for an empty list.",
              "Return xs rotated to the left xs[0] times, taking xs[0] modulo len(xs); empty gives empty."),
             ("Use the first item of xs, reduced modulo the length, as a left-rotation amount and apply it.",),
             "    if not xs:\n        return []\n    k = xs[0] % len(xs)\n    return xs[k:] + xs[:k]\n"),
    }, _shift, _list_in, _list_edges),
    CodeFamily("wordlen", "measure_words", "s: str)", {
        1: L(("Return the list of the lengths of the words of s, where words are separated by whitespace.",
              "Give the length of every whitespace-separated word of s, in order."),
             ("Produce the sequence of character counts of the words in s (split on whitespace).",),
             "    return [len(w) for w in s.split()]\n"),
        2: L(("Return a dict mapping each whitespace-separated word of s to its length.",
              "Build a dict word -> number of letters for the words of s."),
             ("Map every distinct word in s (split on whitespace) to how many characters it has.",),
             "    return {w: len(w) for w in s.split()}\n"),
        3: L(("Return the longest whitespace-separated word of s (the first one on a tie), or '' if s has no words.",
              "Find the word of s with the most characters, the earliest on ties, and '' when there is none."),
             ("Give back the word of maximal length in s, preferring the earlier one, or an empty string.",),
             "    best = ''\n    for w in s.split():\n        if len(w) > len(best):\n            best = w\n    return best\n"),
    }, _none, _words_in, lambda lv, p: [("",), ("   ",), ("ab cd",)]),
    CodeFamily("mergecounts", "combine_tallies", "a: dict, b: dict)", {
        1: L(("Return a dict with every key of a or b, whose value is the sum of the values in a and b (missing = 0).",
              "Merge the count dicts a and b by adding values key by key."),
             ("Combine the two tallies a and b into one, totalling the numbers of shared keys.",),
             "    out = dict(a)\n    for k, v in b.items():\n        out[k] = out.get(k, 0) + v\n    return out\n"),
        2: L(("Return a dict of the keys present in both a and b, each mapped to the smaller of its two values.",
              "Intersect the dicts a and b: keep shared keys with the minimum of the two values."),
             ("Build a mapping from the keys common to a and b to the lesser of their values.",),
             "    return {k: min(v, b[k]) for k, v in a.items() if k in b}\n"),
        3: L(("Add the values of a and b key by key (missing = 0) and return the sorted list of keys whose total "
              "exceeds {t}.",
              "Return, sorted, the keys whose combined value in a plus b is greater than {t}."),
             ("List in sorted order the keys for which a's value plus b's value (absent = 0) is above {t}.",),
             "    keys = set(a) | set(b)\n    return sorted(k for k in keys if a.get(k, 0) + b.get(k, 0) > $t)\n"),
    }, _threshold, _dicts_in, lambda lv, p: [({}, {}), ({"a": 1}, {})]),
    CodeFamily("invert", "flip_mapping", "d: dict) -> dict", {
        1: L(("Return the inverse of d: a dict mapping each value of d to its key (values are distinct).",
              "Swap the keys and values of d, whose values are all different."),
             ("Turn d around so that its values become keys pointing back at the original keys.",),
             "    return {v: k for k, v in d.items()}\n"),
        2: L(("Return a dict mapping each value of d to the sorted list of the keys that have it.",
              "Group the keys of d by value: value -> sorted list of keys."),
             ("Build, for every value found in d, the alphabetically sorted keys that map to it.",),
             "    out = {}\n    for k, v in d.items():\n        out.setdefault(v, []).append(k)\n"
             "    return {v: sorted(ks) for v, ks in out.items()}\n"),
        3: L(("Return a dict mapping each value shared by two or more keys of d to the sorted list of those keys.",
              "Group the keys of d by value, keeping only values held by more than one key (keys sorted)."),
             ("For the values of d that several keys share, map the value to those keys in sorted order.",),
             "    out = {}\n    for k, v in d.items():\n        out.setdefault(v, []).append(k)\n"
             "    return {v: sorted(ks) for v, ks in out.items() if len(ks) > 1}\n"),
    }, _none, _inv_in, lambda lv, p: [({},), ({"x": 1},)]),
    CodeFamily("diffs", "step_changes", "xs: list[int]) -> list[int]", {
        1: L(("Return the differences between consecutive numbers of xs: xs[i + 1] - xs[i] for each i.",
              "List how much each item of xs changes from the previous one (later minus earlier)."),
             ("Give the successive increments of xs, one fewer than its length.",),
             "    return [b - a for a, b in zip(xs, xs[1:])]\n"),
        2: L(("Return the absolute differences between consecutive numbers of xs.",
              "List |xs[i + 1] - xs[i]| for every neighbouring pair of xs."),
             ("Give the sizes of the jumps between adjacent elements of xs, ignoring direction.",),
             "    return [abs(b - a) for a, b in zip(xs, xs[1:])]\n"),
        3: L(("Return the indices i for which |xs[i + 1] - xs[i]| is greater than {t}.",
              "List every position i where the next number of xs differs from xs[i] by more than {t}."),
             ("Give the indexes i at which adjacent values xs[i], xs[i + 1] are further apart than {t}.",),
             "    return [i for i in range(len(xs) - 1) if abs(xs[i + 1] - xs[i]) > $t]\n"),
    }, _threshold, _list_in, _list_edges),
    CodeFamily("running", "prefix_scan", "xs: list[int]) -> list[int]", {
        1: L(("Return the running totals of xs: element i is xs[0] + ... + xs[i].",
              "Give the cumulative sums of xs, one per position."),
             ("Produce the list of partial sums of xs from the start up to each index.",),
             "    out, s = [], 0\n    for x in xs:\n        s += x\n        out.append(s)\n    return out\n"),
        2: L(("Return the running maximum of xs: element i is the largest of xs[0..i].",
              "Give, for every position of xs, the biggest value seen so far."),
             ("Produce the list of prefix maxima of xs.",),
             "    out = []\n    for x in xs:\n        out.append(x if not out else max(out[-1], x))\n    return out\n"),
        3: L(("Return running totals of xs, except that a total below zero is reset to 0 before adding the next item.",
              "Give cumulative sums of xs where the sum restarts at 0 whenever it goes negative."),
             ("Produce partial sums of xs, clamping each one to at least 0 before it carries on.",),
             "    out, s = [], 0\n    for x in xs:\n        s = max(0, s + x)\n        out.append(s)\n    return out\n"),
    }, _none, _list_in, _list_edges),
    CodeFamily("mirror", "mirror_digits", "n: int)", {
        1: L(("Return the integer whose decimal digits are those of n >= 0 in reverse order (leading zeros dropped).",
              "Reverse the digits of the non-negative integer n and return the number."),
             ("Read n >= 0 backwards in base ten and give that value as an int.",),
             "    return int(str(n)[::-1])\n"),
        2: L(("Return n plus the number formed by reversing the decimal digits of n (n >= 0).",
              "Add the digit-reversal of the non-negative integer n to n itself."),
             ("Give the total of n and n written backwards, for n >= 0.",),
             "    return n + int(str(n)[::-1])\n"),
        3: L(("Return True if the base-{b} digits of n >= 0 read the same forwards and backwards.",
              "Check whether n (n >= 0) written in base {b} is symmetric."),
             ("Decide whether the base-{b} representation of the natural number n equals its own reversal.",),
             "    ds = []\n    while n:\n        ds.append(n % $b)\n        n //= $b\n    return ds == ds[::-1]\n"),
    }, _base, _nat_in, _nat_edges),
    CodeFamily("collatz", "hailstone_stats", "n: int) -> int", {
        1: L(("Starting from n >= 1, replace n by n / 2 if even or 3n + 1 if odd; return the steps needed to reach 1.",
              "Count the halving-or-3n+1 steps that take n (n >= 1) down to 1."),
             ("Return how many moves of the hailstone rule (even: halve, odd: triple plus one) bring n >= 1 to 1.",),
             "    steps = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        steps += 1\n"
             "    return steps\n"),
        2: L(("Return the largest value reached by the sequence n, then n / 2 if even or 3n + 1 if odd, until 1 (n >= 1).",
              "Find the peak of the hailstone sequence of n >= 1 (halve evens, triple-plus-one odds, stop at 1)."),
             ("Give the maximum number met while applying the hailstone rule to n >= 1 until it hits 1.",),
             "    top = n\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        top = max(top, n)\n"
             "    return top\n"),
        3: L(("Return how many odd numbers the hailstone sequence of n >= 1 contains, counting n and the final 1.",
              "Count the odd values in the sequence from n (n >= 1) to 1 under halve-or-3n+1, both ends included."),
             ("Give the number of odd terms met going from n >= 1 to 1 by the hailstone rule, endpoints counted.",),
             "    odd = n % 2\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        odd += n % 2\n"
             "    return odd\n"),
    }, _none, _small_nat_in, lambda lv, p: [(1,), (2,), (27,)]),
    CodeFamily("spaces", "tidy_spacing", "s: str) -> str", {
        1: L(("Return s with leading and trailing spaces removed and every run of spaces inside replaced by one space.",
              "Collapse repeated spaces of s to single spaces and strip the ends."),
             ("Give s trimmed at both ends, with each group of consecutive blanks turned into one blank.",),
             "    return ' '.join(w for w in s.split(' ') if w)\n"),
        2: L(("Return s with all whitespace runs (spaces and tabs) replaced by one space and the ends stripped.",
              "Turn every stretch of spaces and tabs in s into a single space, trimming both ends."),
             ("Normalise the whitespace of s: one space between words, none at the start or end.",),
             "    return ' '.join(s.split())\n"),
        3: L(("Normalise the whitespace of s to single spaces, strip the ends, and capitalise the first letter of each word.",
              "Return s with one space between words, no outer spaces, and every word starting with a capital "
              "(the rest lowercase)."),
             ("Tidy s into words separated by one space, each word written with an initial capital.",),
             "    return ' '.join(w[:1].upper() + w[1:].lower() for w in s.split())\n"),
    }, _none, _spaces_in, lambda lv, p: [("",), ("   ",), (" x ",)]),
    CodeFamily("radix", "write_in_base", "n: int) -> str", {
        1: L(("Return the binary representation of n >= 0 as a string without a prefix ('0' for zero).",
              "Write the non-negative integer n in base two, no '0b' prefix."),
             ("Give the string of 0s and 1s that denotes n >= 0 in binary, zero being '0'.",),
             "    return bin(n)[2:]\n"),
        2: L(("Return the digits of n >= 0 written in base {b}, as a string ('0' for zero).",
              "Convert the non-negative integer n to base {b} and return its digits as text."),
             ("Give n >= 0 expressed with base-{b} digits, as a string, zero being '0'.",),
             "    if n == 0:\n        return '0'\n    ds = ''\n    while n:\n        ds = str(n % $b) + ds\n        n //= $b\n"
             "    return ds\n"),
        3: L(("Return the integer n written in base {b} as a string, with a leading '-' when n is negative.",
              "Convert n to base {b} text; negative numbers get a minus sign in front."),
             ("Give n expressed in base {b}, as a string, prefixed by '-' for negative values.",),
             "    if n == 0:\n        return '0'\n    sign, n, ds = '-' if n < 0 else '', abs(n), ''\n    while n:\n"
             "        ds = str(n % $b) + ds\n        n //= $b\n    return sign + ds\n"),
    }, _base, lambda rng, lv, p: (rng.randint(-500, 500) if lv == 3 else rng.randint(0, 500),),
        lambda lv, p: [(0,), (1,)] + ([(-1,)] if lv == 3 else [])),
    CodeFamily("grid", "grid_reduce", "m: list[list[int]])", {
        1: L(("Return the transpose of the rectangular matrix m (a list of rows); the transpose of [] is [].",
              "Swap the rows and columns of the matrix m given as a list of equal-length rows."),
             ("Give the matrix whose i-th row is the i-th column of m.",),
             "    return [list(col) for col in zip(*m)]\n"),
        2: L(("Return the list of the sums of the columns of the rectangular matrix m ([] for an empty matrix).",
              "Add up each column of the matrix m (a list of rows)."),
             ("Give the total of every column of m, in column order.",),
             "    return [sum(col) for col in zip(*m)]\n"),
        3: L(("Return the sum of the main diagonal of the square matrix m minus the sum of its other diagonal.",
              "For the square matrix m, subtract the anti-diagonal total from the main-diagonal total."),
             ("Give trace(m) minus the sum of m[i][n - 1 - i] for the n x n matrix m.",),
             "    n = len(m)\n    return sum(m[i][i] for i in range(n)) - sum(m[i][n - 1 - i] for i in range(n))\n"),
    }, _none, _matrix_in, lambda lv, p: [([],), ([[4]],)]),
    CodeFamily("interleave", "weave_lists", "a: list[int], b: list[int]) -> list[int]", {
        1: L(("Return a list taking items alternately from a and b, starting with a; leftovers of the longer list go at the end.",
              "Interleave a and b element by element (a first), appending whatever remains."),
             ("Zip a and b together one item at a time beginning with a, then add the unused tail.",),
             "    out = []\n    for i in range(max(len(a), len(b))):\n        out += a[i:i + 1] + b[i:i + 1]\n    return out\n"),
        2: L(("Return the elementwise sums a[i] + b[i]; where one list is longer, its extra items are kept as they are.",
              "Add a and b position by position, treating missing items of the shorter list as 0."),
             ("Give the positionwise totals of a and b, padding the shorter one with zeros.",),
             "    n = max(len(a), len(b))\n    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]\n"),
        3: L(("Return the sorted list of the values that occur in both a and b, each value once.",
              "Find the distinct numbers common to a and b and return them in ascending order."),
             ("Give, ascending and without repeats, every value appearing in a as well as in b.",),
             "    return sorted(set(a) & set(b))\n"),
    }, _none, _two_lists_in, lambda lv, p: [([], []), ([1, 2], [])]),
)
BY_NAME: dict[str, CodeFamily] = {f.name: f for f in FAMILIES}
