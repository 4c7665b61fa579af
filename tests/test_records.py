"""The generated Art. 30 record and deletion concept agree with the rules the jobs enforce."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from core import catalogue
from core.records import document
from core.settings import Settings
from flows.registry import FLOWS
from psync.cli import app

ROOT = Path(__file__).resolve().parent.parent


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("language", ["de", "en"])
@pytest.mark.parametrize("fmt", ["md", "csv"])
def test_both_documents_in_both_languages_and_formats(language, fmt):
    settings = Settings()
    record = document("record", settings, language, fmt)
    concept = document("concept", settings, language, fmt)
    for entry in catalogue.PROCESSORS:
        assert entry.legal_name in record
    for other in catalogue.NOT_RECIPIENTS:
        assert other.legal_name in record and other.why(language) in record
    for rule in catalogue.RULES:
        assert rule.id in concept and rule.data_type(language) in concept
    if fmt == "md":
        assert record.startswith("# " + ("Verzeichnis" if language == "de" else "Record"))
        assert ("Löschklassen" if language == "de" else "Deletion classes") in concept


def test_the_concept_shows_the_periods_in_force(monkeypatch):
    changed = {
        "optin_expiry_days_newsletter": 25,
        "optin_expiry_days_service_offers": 14,
        "timify.customer_retention_days": 10,
        "video_chat_retention_days": 60,
        "isic.document_retention_days": 20,
    }
    grouped: dict = {}
    for name, days in changed.items():
        group, _, field = name.rpartition(".")
        (grouped.setdefault(group, {}) if group else grouped)[field] = days
    settings = Settings(**grouped)
    parsed = rows(document("concept", settings, "en", "csv"))
    by_rule = {row["rule"]: row for row in parsed}
    for rule in catalogue.RULES:
        expected = changed.get(rule.setting or "", rule.period_days)
        assert by_rule[rule.id]["standard period (days)"] == str(expected), rule.id
    record = document("record", settings, "de", "csv")
    assert "25 Tage nach: Anmeldung ohne Bestätigung" in record and "60 Tage nach: Ende der Videoberatung" in record


def test_every_enforcing_job_exists_and_reads_the_setting_the_rule_names():
    deployments = {d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    sources = {p.name: p.read_text() for p in (ROOT / "flows").glob("*.py")}
    for rule in catalogue.RULES:
        if rule.enforced_by == "manual":
            assert catalogue.processor(rule.holder).erasure.mode == catalogue.Mode.manual, rule.id
            continue
        assert rule.enforced_by in deployments, rule.id
        home = FLOWS[rule.enforced_by].split(":")[0].removeprefix("flows.") + ".py"
        if rule.setting:
            # The enforcing job reads the period the document shows: by name, by its name built
            # per list (the opt-in expiry: optin_expiry_days_{list_name}), or through the
            # catalogue's rule (enforce-retention).
            per_list = rule.setting.removesuffix("newsletter").removesuffix("service_offers") + "{list_name}"
            readers = (rule.setting, per_list, "rule.days(settings)")
            assert any(reader in sources[home] for reader in readers), rule.id


def test_every_retention_period_in_the_settings_is_a_documented_rule():
    fields = [v.removeprefix("PSYNC_").lower() for v in Settings.variables()]
    groups = {name for name in Settings.model_fields if name not in fields}  # a processor's
    periods = set()
    for name in (n for n in fields if re.search(r"(retention|expiry)_days", n)):
        group, _, field = name.partition("_")
        periods.add(f"{group}.{field}" if group in groups else name)
    assert periods == {rule.setting for rule in catalogue.RULES if rule.setting}


def test_psync_docs_writes_files(tmp_path):
    runner = CliRunner()
    out = tmp_path / "vvt.csv"
    result = runner.invoke(app, ["docs", "record", "--format", "csv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert rows(out.read_text())[0]["Empfänger"].startswith("CleverReach GmbH & Co. KG")
    result = runner.invoke(app, ["docs", "deletion-concept", "--lang", "en"])
    assert result.exit_code == 0 and "| R06 | TIMIFY customer with their appointments |" in result.output
