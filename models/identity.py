"""Identifiers of a data subject: normalisation, validation and pseudonyms.

The pseudonym is a keyed HMAC of the normalised identifier, so logs and the audit trail can
name a subject without naming the person, and nobody without the key can reverse it.
"""

from __future__ import annotations

import hmac
import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email

_KVNR = re.compile(r"[A-Z][0-9]{9}")


def normalise_email(value: str) -> str:
    """The one form of an e-mail address we match on.

    >>> normalise_email("  Erika.Mustermann@Example.DE ")
    'erika.mustermann@example.de'

    Raises ValueError (without echoing the address) when it is not a valid address.
    """
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid e-mail address ({_reason(exc)})") from None
    return checked.normalized.lower()


# RFC 5322's dot-atom: what email-validator accepts before the @-sign unchanged (unquoted,
# ASCII, no normalisation), whatever its length there (only the whole address is limited).
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_EMAIL_MAX_LENGTH = 254  # email-validator's limit, in UTF-8 bytes, on every form of the address


class KnownDomains:
    """``normalise_email`` for many addresses at once (one intake run), with the same results.

    Most of email-validator's cost is the domain's check (IDNA, the special-use names), and
    the domain's result does not depend on the part before the @-sign. So the domains seen
    are kept (as given: the normalised and the ASCII form), and an address whose part before
    the @-sign is a plain dot-atom, at a domain seen before, is put together from them, with
    the library's length checks; anything else goes through the library. Held for the run
    only, bounded all the same.
    """

    def __init__(self, limit: int = 100_000):
        self.limit = limit
        self.domains: dict[str, tuple[str, str]] = {}

    def normalise(self, value: str) -> str:
        """``normalise_email(value)``: the same address, or the same ValueError."""
        address = value.strip()
        local, at, domain = address.rpartition("@")
        plain = bool(at) and _DOT_ATOM.fullmatch(local) is not None
        known = self.domains.get(domain) if plain else None
        if known is not None:
            normalised, ascii_domain = known
            result = f"{local}@{normalised}"
            if (
                max(len(address.encode()), len(result.encode()), len(local) + 1 + len(ascii_domain))
                <= _EMAIL_MAX_LENGTH
            ):
                return result.lower()
        try:
            checked = validate_email(address, check_deliverability=False)
        except EmailNotValidError as exc:
            raise ValueError(f"not a valid e-mail address ({_reason(exc)})") from None
        if plain and checked.ascii_domain:
            if len(self.domains) >= self.limit:
                self.domains.clear()
            self.domains[domain] = (checked.domain, checked.ascii_domain)
        return checked.normalized.lower()


def _reason(exc: EmailNotValidError) -> str:
    # email-validator's messages sometimes quote the address or spell out its characters
    # ('m', 'u', ...); pass a message on only when it cannot contain any of the input.
    text = str(exc)
    if any(ch in text for ch in "@\"'") or len(text) > 120:
        return "malformed"
    return text.rstrip(".")


def insurance_number_valid(value: str) -> bool:
    """Check the health-insurance number (Krankenversichertennummer, § 290 SGB V).

    Ten characters: a capital letter, eight digits, one check digit. The letter becomes its
    two-digit alphabet position (A=01 … Z=26); those ten digits are weighted 1,2,1,2,…;
    products above 9 are replaced by their digit sum; the sum modulo 10 is the check digit.

    >>> insurance_number_valid("A123456780")
    True
    >>> insurance_number_valid("A123456781")
    False
    """
    # ASCII only: str.isdigit() would also accept "²" or Arabic-Indic digits.
    if not _KVNR.fullmatch(value):
        return False
    digits = f"{ord(value[0]) - ord('A') + 1:02d}" + value[1:9]
    total = 0
    for i, ch in enumerate(digits):
        product = int(ch) * (1 if i % 2 == 0 else 2)
        total += product // 10 + product % 10
    return total % 10 == int(value[9])


def normalise_insurance_number(value: str) -> str:
    """Upper-case, no spaces; raises ValueError (without the number) when the check fails."""
    cleaned = value.replace(" ", "").upper()
    if not insurance_number_valid(cleaned):
        raise ValueError("not a valid health-insurance number (format or check digit)")
    return cleaned


def normalise_phone(value: str, region: str = "DE") -> str:
    """A valid phone number in E.164 form; national numbers are read as German.

    >>> normalise_phone("030 901820")
    '+4930901820'

    Raises ValueError (without the number) when it is not a valid number.
    """
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        raise ValueError("not a valid phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def pseudonym(key: bytes, kind: str, normalised: str) -> str:
    """Keyed HMAC-SHA256 of a normalised identifier, 32 hex characters.

    >>> pseudonym(b"k", "email", "a@example.de") == pseudonym(b"k", "email", "a@example.de")
    True
    """
    # hmac.digest: the one-shot C path, the same value as hmac.new(...).hexdigest().
    return hmac.digest(key, f"{kind}:{normalised}".encode(), "sha256").hex()[:32]
