"""Identifiers: health-insurance number check digit, e-mail normalisation, pseudonyms."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.identity import (
    KnownDomains,
    insurance_number_valid,
    normalise_email,
    normalise_insurance_number,
    pseudonym,
)

# Check digits worked out by hand from the docstring's rule (letter -> two-digit position,
# then the first eight digits; weights 1,2,1,2,...; products > 9 -> digit sum; sum mod 10).
# e.g. Z98765432: 2,6,9,8,7,6,5,4,3,2 -> 2+3+9+7+7+3+5+8+3+4 = 51 -> check digit 1.
VALID = ["A123456780", "Z987654321", "M000000007", "B102030404", "K555555557", "T999999994"]


@pytest.mark.parametrize("number", VALID)
def test_valid_numbers_pass(number):
    assert insurance_number_valid(number) is True
    assert normalise_insurance_number(number) == number


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("A123456780", True),
        ("A123456781", False),  # check digit off by one
        ("A123456789", False),
        ("Z987654320", False),
        ("Q314159266", True),
        ("Q314159265", False),
        ("X271828182", True),
        ("a123456780", False),  # lowercase letter: valid only after normalising
        ("A12345678", False),  # nine characters
        ("A1234567801", False),  # eleven characters
        ("", False),
        ("1123456780", False),  # digit instead of the letter
        ("AB23456780", False),  # two letters
        ("A1234567X0", False),  # letter among the digits
        ("A12345678 ", False),  # trailing space counts as a character here
        ("Ä123456780", False),  # not A-Z
    ],
)
def test_check_digit_table(value, valid):
    assert insurance_number_valid(value) is valid


def test_every_wrong_check_digit_is_refused():
    for digit in "123456789":
        assert insurance_number_valid("A12345678" + digit) is False


def test_normalise_upper_cases_and_drops_spaces():
    assert normalise_insurance_number("a123456780") == "A123456780"
    assert normalise_insurance_number(" z 98765 4321 ") == "Z987654321"


@pytest.mark.parametrize("bad", ["A123456781", "A12345678", "A1234567801", "A1234567X0", "1123456780", ""])
def test_normalise_refuses_without_echoing(bad):
    with pytest.raises(ValueError) as info:
        normalise_insurance_number(bad)
    message = str(info.value)
    assert "health-insurance number" in message
    if bad:
        assert bad not in message
        assert bad[1:9] not in message


def test_superscript_digit_is_invalid_not_an_error():
    assert insurance_number_valid("A12345678²") is False


def test_non_ascii_digits_are_invalid():
    # The same digits as A123456780, written in Arabic-Indic numerals.
    assert insurance_number_valid("A١٢٣٤٥٦٧٨٠") is False


# e-mail --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Erika.Mustermann@Example.DE ", "erika.mustermann@example.de"),
        ("MAX@EXAMPLE.DE", "max@example.de"),
        ("erika@example.de\n", "erika@example.de"),
        ("info+news@Sub.Example.de", "info+news@sub.example.de"),
    ],
)
def test_normalise_email(raw, expected):
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "mustermann.example.de",
        "mustermann@@example.de",
        "mustermann@example..de",
        "muster mann@example.de",
        "mustermann@localhost",
        "mustermann@exa_mple.de",
        ".mustermann@example.de",
        "Erika <mustermann@example.de>",
        "",
    ],
)
def test_bad_email_refused_without_echoing(bad):
    with pytest.raises(ValueError) as info:
        normalise_email(bad)
    message = str(info.value)
    assert message.startswith("not a valid e-mail address")
    assert "@" not in message
    assert "mustermann" not in message.lower()


def test_bad_email_message_does_not_spell_out_the_address():
    with pytest.raises(ValueError) as info:
        normalise_email('"x"mustermann@example.de')
    letters_only = re.sub(r"[^a-z]", "", str(info.value).lower())
    assert "mustermann" not in letters_only


def _outcome(normalise, address):
    try:
        return normalise(address)
    except ValueError as exc:
        return ("refused", str(exc))


DOMAINS = ["example.de", "Sub.Example.DE", "bücher.example", "xn--bcher-kva.example", "localhost", "a.b", "1.2"]
# Everything before the @-sign that matters: plain characters, dots, quotes, @, spaces,
# non-ASCII, and lengths around the limits (64 before the @-sign, 254 in all).
LOCAL = st.one_of(
    st.text(alphabet="aZ09.!#$%&'*+/=?^_`{|}~-\"@ ü<>()[]", max_size=12),
    st.integers(min_value=60, max_value=260).map(lambda n: "x" * n),
)


@settings(max_examples=400, deadline=None)
@given(local=LOCAL, domain=st.sampled_from(DOMAINS), pad=st.sampled_from(["", " ", "\n"]))
def test_known_domains_normalise_as_the_library_does(local, domain, pad):
    """The run's shortcut (a domain checked before) gives what email-validator gives, for
    the same address: the same normalised form or the same refusal."""
    known = KnownDomains()
    with contextlib.suppress(ValueError):  # a domain the library refuses is never kept
        known.normalise(f"warm.up@{domain}")
    address = f"{pad}{local}@{domain}{pad}"
    assert _outcome(known.normalise, address) == _outcome(normalise_email, address)


def test_known_domains_keeps_a_domain_once_checked():
    known = KnownDomains()
    assert known.normalise("Erika.Mustermann@Example.DE") == "erika.mustermann@example.de"
    assert known.domains == {"Example.DE": ("example.de", "example.de")}
    assert known.normalise("max+news@Example.DE ") == "max+news@example.de"
    with pytest.raises(ValueError, match="not a valid e-mail address"):
        known.normalise("max..news@Example.DE")


# pseudonyms -----------------------------------------------------------------------------


def test_pseudonym_is_stable_and_32_hex():
    first = pseudonym(b"key-one", "email", "erika@example.de")
    assert first == pseudonym(b"key-one", "email", "erika@example.de")
    assert re.fullmatch(r"[0-9a-f]{32}", first)


def test_pseudonym_depends_on_key_kind_and_value():
    base = pseudonym(b"key-one", "email", "erika@example.de")
    assert pseudonym(b"key-two", "email", "erika@example.de") != base
    assert pseudonym(b"key-one", "kvnr", "erika@example.de") != base
    assert pseudonym(b"key-one", "email", "max@example.de") != base


@pytest.mark.parametrize("value", ["erika@example.de", "A123456780", "0123456789abcdef"])
def test_pseudonym_never_contains_the_input(value):
    result = pseudonym(b"key-one", "email", value)
    assert value not in result
    assert value.split("@")[0] not in result
