"""Human-written dates and their ISO form, for the ``dates`` translation task.

``random_dates`` draws (human text, "YYYY-MM-DD") pairs from a seeded Generator: dates from
1950-01-01 to 2049-12-31 written in one of ``len(FORMATS)`` formats ("3rd of May 1999",
"05/03/99" (month first; two-digit years 50-99 are 19xx, 00-49 are 20xx), "Monday, May 3,
1999", "19990503", ...) with random letter case. ``dates_split`` holds out a seeded tenth of
the days: no held-out day appears in the training set in any format.
"""
from __future__ import annotations

import datetime

import numpy as np

from ..nn.layers import _int_in, _number_in, _seeded

__all__ = ["FORMATS", "format_date", "random_dates", "dates_split", "DATE_CHARS", "ISO_CHARS"]

_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FIRST_DAY, LAST_DAY = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)  # the data's days
_FIRST, _LAST = FIRST_DAY.toordinal(), LAST_DAY.toordinal()

# Every character a formatted date can hold (letters of both cases, digits, separators).
DATE_CHARS = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,./-'"))
ISO_CHARS = sorted(set("0123456789-"))


def _ordinal(d):
    if 10 <= d % 100 <= 20:
        return f"{d}th"
    return f"{d}" + {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")


def _fields(date):
    m, d, y = date.month, date.day, date.year
    return dict(d=str(d), dd=f"{d:02d}", dth=_ordinal(d), m=str(m), mm=f"{m:02d}",
                B=_MONTHS[m - 1], b=_MONTHS[m - 1][:3], A=_DAYS[date.weekday()],
                a=_DAYS[date.weekday()][:3], Y=str(y), yy=f"{y % 100:02d}")


# str.format templates over the fields above.
FORMATS = [
    "{d} {B} {Y}", "{dd} {B} {Y}", "{dth} of {B} {Y}", "the {dth} of {B}, {Y}", "{dth} {B} {Y}",
    "{B} {d}, {Y}", "{B} {dth}, {Y}", "{B} {d} {Y}", "{A}, {B} {d}, {Y}", "{A} {d} {B} {Y}",
    "{a}, {dd} {b} {Y}", "{b} {d}, {Y}", "{d} {b} {Y}", "{dd}-{b}-{Y}", "{dd}-{b}-{yy}",
    "{mm}/{dd}/{yy}", "{m}/{d}/{yy}", "{mm}/{dd}/{Y}", "{m}/{d}/{Y}", "{dd}.{mm}.{Y}",
    "{d}.{m}.{Y}", "{Y}-{mm}-{dd}", "{Y}/{mm}/{dd}", "{Y}{mm}{dd}", "{b} {dth} '{yy}",
    "{A} the {dth} of {B} {Y}", "{b}. {d}, {Y}",
]


def format_date(date, fmt, case="title"):
    """``date`` (datetime.date) written with template ``fmt``; case "title", "lower" or "upper"."""
    text = fmt.format(**_fields(date))
    if case == "lower":
        return text.lower()
    if case == "upper":
        return text.upper()
    return text


def random_dates(n, seed=0, ordinals=None):
    """``n`` pairs (text, iso) drawn from days ``ordinals`` (all days 1950-2049 if None)."""
    n = _int_in(n, "n", 0)
    rng = _seeded(seed)
    if ordinals is None:
        ordinals = np.arange(_FIRST, _LAST + 1)
    days = rng.choice(ordinals, size=n)
    fmts = rng.integers(0, len(FORMATS), size=n)
    cases = rng.choice(["title", "title", "lower", "upper"], size=n)
    pairs = []
    for o, f, c in zip(days, fmts, cases):
        date = datetime.date.fromordinal(int(o))
        pairs.append((format_date(date, FORMATS[f], c), date.isoformat()))
    return pairs


def dates_split(n_train, n_test, seed=0, test_fraction=0.1):
    """(train pairs, held-out pairs): the held-out pairs use days that no training pair uses."""
    # (a fraction of 0 or 1 leaves one side no day to draw from)
    test_fraction = _number_in(test_fraction, "test_fraction", 0, 1, "in (0, 1)")
    if test_fraction in (0.0, 1.0):
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    n_train, n_test = _int_in(n_train, "n_train", 0), _int_in(n_test, "n_test", 0)
    all_days = np.arange(_FIRST, _LAST + 1)
    held = np.random.default_rng(10_000 + seed).random(len(all_days)) < test_fraction
    if (n_test and not held.any()) or (n_train and held.all()):  # (a fraction near 0 or 1)
        raise ValueError(f"test_fraction: {test_fraction!r} leaves the "
                         f"{'held-out' if n_test and not held.any() else 'training'} pairs no "
                         f"day to draw from")
    return (random_dates(n_train, seed, all_days[~held]),
            random_dates(n_test, seed + 1, all_days[held]))
