"""The processing catalogue covers every processor the seeds name, is sound in itself, and is
what the connectors enforce."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors import cleverreach, flexperto, isic, nect, timify
from core import catalogue
from core.settings import Settings

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"

# Every organisation the five seeds name that could receive the controller's data:
# (how the seed spells it, the seed's number, catalogue key, a recipient?).
NAMED_IN_SEEDS = [
    ("CleverReach GmbH & Co. KG", "000", "cleverreach", True),
    ("USU GmbH", "000", "usu", True),
    ("TerminApp GmbH", "001", "timify", True),
    ("Flexperto GmbH", "001", "flexperto", True),
    ("RDS Reisedienst Deutscher Studentenschaften GmbH", "003", "isic", True),
    ("Nect GmbH", "002", "nect", True),
    ("Milliways Infodesign GmbH", "004", "emilie", True),
    ("DOCYET GmbH", "002", "docyet", False),
    ("Firebase Crashlytics", "002", "firebase-crashlytics", False),
]


@pytest.mark.parametrize(("name", "seed", "key", "recipient"), NAMED_IN_SEEDS)
def test_every_processor_named_in_the_seeds_is_in_the_catalogue(name, seed, key, recipient):
    if recipient:
        entry = catalogue.processor(key)
        assert entry.seed == seed and entry.purposes and entry.locations.de and entry.legal_name
        assert all(p.legal_basis.startswith("Art.") and p.rule for p in entry.purposes)
    else:
        entry = next(n for n in catalogue.NOT_RECIPIENTS if n.key == key)
        assert entry.seed == seed and entry.why.de and entry.why.en
        assert not catalogue.known(key), "a non-recipient must not be a processor as well"
    assert name.split()[0].lower() in (entry.legal_name + entry.address).lower()


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the seeds are not beside this checkout")
@pytest.mark.parametrize(("name", "seed", "key", "recipient"), NAMED_IN_SEEDS)
def test_the_list_above_is_what_the_seeds_say(name, seed, key, recipient):
    (text,) = [p.read_text() for p in SEEDS.glob(f"{seed}_*.txt")]
    assert name in text.replace("\u00a0", " ")  # seed 000 writes "USU GmbH" with a no-break space


def test_the_catalogue_holds_nothing_the_seeds_do_not_name():
    assert {p.key for p in catalogue.PROCESSORS} == {k for _, _, k, r in NAMED_IN_SEEDS if r}
    assert {n.key for n in catalogue.NOT_RECIPIENTS} == {k for _, _, k, r in NAMED_IN_SEEDS if not r}


def test_the_catalogue_is_consistent():
    assert catalogue.check() == []


def test_roles_sub_processors_and_manual_contacts_as_the_seeds_say():
    assert catalogue.processor("flexperto").role == catalogue.Role.sub_processor
    assert catalogue.processor("timify").sub_processors == ("flexperto",)
    assert catalogue.manual_processors().keys() == {"usu", "emilie"}
    assert catalogue.co_recipients("cleverreach", "consent:newsletter") == ("usu",)
    assert catalogue.co_recipients("cleverreach", "consent:service_offers") == ()
    assert "Irland" in catalogue.processor("cleverreach").locations.de
    assert "EWR" in catalogue.processor("emilie").locations.de


def test_connectors_enforce_the_catalogue_allow_lists():
    assert timify.ALLOWED_FIELDS == catalogue.allowed_fields("timify", "booking")
    assert flexperto.ALLOWED_FIELDS == catalogue.allowed_fields("flexperto", "video:B-1")
    assert isic.ALLOWED_FIELDS == catalogue.allowed_fields("isic", "student-id:O-1")
    assert nect.ALLOWED_FIELDS == catalogue.allowed_fields("nect", "ident:c-1") == {"reference"}
    for name in ("newsletter", "service_offers"):
        flat = {
            (f"{group}.{f}" if group != "receiver" else f)
            for group, fields in cleverreach.ALLOWED_FIELDS[name].items()
            for f in fields
        }
        assert flat == catalogue.allowed_fields("cleverreach", f"consent:{name}")
    # The newsletter has no link to the CRM: never the insurance number (seed 000).
    assert "attributes.insurance_number" not in catalogue.allowed_fields("cleverreach", "consent:newsletter")


def test_rule_periods_are_the_settings_defaults_the_flows_enforce():
    defaults = Settings()
    for rule in catalogue.RULES:
        if rule.setting:
            assert rule.days(defaults) == rule.period_days, rule.id


def test_purposes_match_register_keys():
    assert catalogue.purpose_of("flexperto", "video:B-1") is not None
    assert catalogue.purpose_of("flexperto", "video:") is not None  # the declaration itself
    assert catalogue.purpose_of("flexperto", "booking") is None
    assert catalogue.purpose_of("printshop", "x") is None
