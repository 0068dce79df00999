"""Fuzz every params section (hypothesis): each invalid value of each key is refused with one line naming the key.

The strategies below build values that the schema must refuse, from the field's declared type and bounds alone
(out of range, NaN / inf, wrong type, not one of the choices, malformed lists and mappings); a value that would be
valid can never be drawn, so any accepted example is a validation hole."""

import re
from typing import Literal

import annotated_types as at
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.core.params import ARCH_PATTERN, SECTIONS, ParamsError, section_with

NESTED = st.dictionaries(st.text(max_size=2), st.integers(), min_size=1, max_size=1)
NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
JUNK = st.one_of(
    st.none(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=1)
)


def bounds(field):
    lo = hi = None
    for m in field.metadata:
        if isinstance(m, (at.Ge, at.Gt)):
            lo = (m.ge if isinstance(m, at.Ge) else m.gt, isinstance(m, at.Gt))
        if isinstance(m, (at.Le, at.Lt)):
            hi = (m.le if isinstance(m, at.Le) else m.lt, isinstance(m, at.Lt))
    return lo, hi


def out_of_range(field, kind):
    (lo, lo_open), (hi, hi_open) = bounds(field)
    if kind is int:
        return st.one_of(st.integers(max_value=lo if lo_open else lo - 1), st.integers(min_value=hi if hi_open else hi + 1))
    finite = dict(allow_nan=False, allow_infinity=False)
    return st.one_of(st.floats(max_value=lo, exclude_max=not lo_open, **finite), st.floats(min_value=hi, exclude_min=not hi_open, **finite))


def invalid(field):
    t = field.annotation
    if getattr(t, "__origin__", None) is Literal:
        choices = t.__args__
        anything = st.one_of(st.text(max_size=8), st.integers(), st.floats(allow_nan=False), JUNK)
        return anything.filter(lambda v: v not in choices or isinstance(v, bool))
    if t is bool:
        return st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.none())
    if t is int:
        return st.one_of(out_of_range(field, int), st.floats(), st.booleans(), JUNK)
    if t is float:
        return st.one_of(out_of_range(field, float), NON_FINITE, st.booleans(), JUNK)
    if t is str:
        wrong = st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.text(max_size=2), max_size=2))
        if any(getattr(m, "pattern", None) == ARCH_PATTERN for m in field.metadata):
            return st.one_of(wrong, st.text(max_size=12).filter(lambda s: not re.match(ARCH_PATTERN, s)))
        return wrong
    if getattr(t, "__origin__", None) is list:
        item = t.__args__[0]
        bad_item = st.one_of(st.text(max_size=3), st.none(), st.booleans(), NON_FINITE if item is float else st.floats())
        return st.one_of(st.lists(bad_item, min_size=1, max_size=3), st.integers(), st.text(max_size=4), st.none())
    # dict[str, scalar | list[scalar]]
    return st.one_of(
        st.lists(st.integers(), max_size=2),
        st.text(max_size=4),
        st.integers(),
        st.dictionaries(st.text(min_size=1, max_size=3), st.one_of(st.none(), NON_FINITE, NESTED), min_size=1, max_size=2),
        st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=1),
    )


CASES = [(name, key) for name, cls in SECTIONS.items() for key in cls.model_fields]


@pytest.mark.parametrize("section,key", CASES, ids=[f"{s}.{k}" for s, k in CASES])
@settings(max_examples=25, deadline=None, derandomize=True)
@given(data=st.data())
def test_every_invalid_value_is_one_line_naming_the_key(section, key, data):
    value = data.draw(invalid(SECTIONS[section].model_fields[key]), label=f"{section}.{key}")
    with pytest.raises(ParamsError) as e:
        section_with(section, **{key: value})
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"params.yaml: {section}.{key}"), message
