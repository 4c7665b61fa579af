"""The processing catalogue: every processor and purpose of the seeds, declared once.

Data only, at the bottom of the arrows, so connectors (their allow-lists), models (the
register's co-recipients, the erasure's local look-ups), flows (erasure, retention) and the
CLI (the Art. 30 record and the deletion concept, ``psync docs``) all read the same facts.

For every processor and purpose: who it is (legal name, address, role, server locations
as the seeds state them), which data categories and fields it may receive (``fields``: the
allow-list its connector enforces; nested keys dotted, ``attributes.signup_ip``), the legal
basis, the deletion rule (DIN 66398 / DIN EN ISO/IEC 27555: a data type, a start event, a
standard period, a deletion class, the statutory justification, a backup period), how erasure
works (API with read-back, or manual with a contact and a letter) and its own
sub-processors. Those the seeds name but which receive nothing from the controller stand in
``NOT_RECIPIENTS``, with why.

Texts are (German, English) pairs: the documents come in both languages. Where a seed says
nothing, the entry says so ("nicht angegeben / not stated") instead of guessing; choices of
ours that no seed states are marked ASSUMED.

Adding a processor: one ``Processor`` entry here (with its purposes and rules), one
connector module declaring ``ERASER`` when it has an API (``connectors/erasure.py``), one
sandbox module. A manual processor needs the entry only.

Example::

    from core.catalogue import allowed_fields, purpose_of
    allowed_fields("flexperto", "video:")       # frozenset({'external_id', 'email', 'phone'})
    purpose_of("timify", "booking").rule.period_days   # 30
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple


class Text(NamedTuple):
    """A text in German (what the controller files) and English."""

    de: str
    en: str

    def __call__(self, language: str) -> str:
        return self.de if language == "de" else self.en


NOT_STATED = Text("in der Datenschutzerklärung nicht angegeben", "not stated in the privacy policy")
NO_TEXT = Text("", "")
NO_TRANSFER = Text("keine Übermittlung in Drittländer", "no transfer to third countries")


class Role(enum.StrEnum):
    processor = "processor"  # Auftragsverarbeiter (Art. 28 GDPR)
    sub_processor = "sub-processor"  # Unterauftragsverarbeiter (Art. 28(2), (4) GDPR)


class Mode(enum.StrEnum):
    api = "api"  # erased through the connector, verified by reading back
    manual = "manual"  # a person sends the generated request and confirms with evidence


class Start(enum.StrEnum):
    """Start events of deletion rules (DIN 66398: Startzeitpunkt)."""

    signup_unconfirmed = "signup_unconfirmed"  # double opt-in mail sent, never confirmed
    consent_withdrawn = "consent_withdrawn"  # consent withdrawn or lapsed
    last_appointment = "last_appointment"  # the customer's last appointment took place
    consultation_ended = "consultation_ended"  # the video consultation ended
    card_issued = "card_issued"  # the student ID was issued (order and follow-ups done)
    contract_ended = "contract_ended"  # the customer's account (Mehrwertkonto) ended
    conversation_ended = "conversation_ended"  # the call's matter is settled
    erasure_request = "erasure_request"  # an erasure request (Art. 17) reached us


START_TEXT: Mapping[Start, Text] = {
    Start.signup_unconfirmed: Text(
        "Anmeldung ohne Bestätigung (Double-Opt-In), oder Bestätigung, deren Anmeldung nicht eingeht",
        "sign-up left unconfirmed (double opt-in), or a confirmation whose sign-up never arrives",
    ),
    Start.consent_withdrawn: Text("Widerruf oder Wegfall der Einwilligung", "consent withdrawn or lapsed"),
    Start.last_appointment: Text("letzter Termin des Kunden", "the customer's last appointment"),
    Start.consultation_ended: Text("Ende der Videoberatung", "end of the video consultation"),
    Start.card_issued: Text("Ausstellung des Ausweises", "the card was issued"),
    Start.contract_ended: Text("Ende des Vertragsverhältnisses (Konto)", "end of the contract (account)"),
    Start.conversation_ended: Text(
        "Ende der Kommunikation (Anliegen erledigt)", "end of the conversation (matter settled)"
    ),
    Start.erasure_request: Text("Löschantrag der betroffenen Person", "the data subject's erasure request"),
}


@dataclass(frozen=True)
class DeletionClass:
    """A deletion class (DIN 66398 Löschklasse): a start-event kind and a standard period."""

    id: str
    start: Start
    period_days: int | None  # None: at once, as soon as the event is processed
    name: Text


@dataclass(frozen=True)
class DeletionRule:
    """One deletion rule per data type (data held for one purpose in one place).

    `period_days` is the standard period after the start event (0: at once); a settings field
    named by `setting` overrides it (the enforcing flow reads that field; "timify.x" is the
    field x of the processor's settings group). `enforced_by` names
    the flow (its Prefect deployment) that deletes when the period is over, or "manual" when a
    person does (the processor's own deletion, requested by letter).
    """

    id: str
    data_type: Text
    holder: str  # "controller" or a processor key
    start: Start
    period_days: int
    deletion_class: str
    justification: Text
    enforced_by: str
    setting: str | None = None
    # Backups: None = not stated by the seed (agreed in the processor's contract, Art. 28(3)(g)).
    backup_days: int | None = None

    def days(self, settings: Any = None) -> int:
        """The period in force: the setting when one is named and given, else the standard."""
        if self.setting and settings is not None:
            return int(functools.reduce(getattr, self.setting.split("."), settings))
        return self.period_days


@dataclass(frozen=True)
class Purpose:
    """A purpose for which a processor receives data.

    `key` is the register's purpose, or its prefix ending in ":" for purposes per record
    ("video:" matches "video:B-17"). `local` names the controller's records an erasure
    needs to find the processor's ones (``models.erasure.local_records``); `hold_while`
    names a check that keeps the data while it is lawfully still needed
    (``models.erasure.hold_reason``).
    """

    key: str
    name: Text
    seed: str
    subjects: Text
    categories: tuple[Text, ...]
    fields: frozenset[str]
    legal_basis: str
    rule: DeletionRule
    local: str | None = None
    hold_while: str | None = None

    def matches(self, purpose: str) -> bool:
        if self.key.endswith(":"):
            return purpose.startswith(self.key) and len(purpose) > len(self.key)
        return purpose == self.key


@dataclass(frozen=True)
class Erasure:
    """How erasure works there: through the API (connector module ``connectors.<key>``
    declares ``ERASER``) or by a request a person sends to `contact` and confirms."""

    mode: Mode
    contact: str = ""
    channel: Text = NO_TEXT


@dataclass(frozen=True)
class Processor:
    key: str  # the register's name for it
    legal_name: str
    address: str
    role: Role
    seed: str
    service: Text
    locations: Text
    purposes: tuple[Purpose, ...]
    erasure: Erasure
    sub_processors: tuple[str, ...] = ()
    # Whoever works on this processor's data for a purpose: (processor key, purpose key).
    # The register writes a row for them whenever a row is written for that one.
    works_on: tuple[tuple[str, str], ...] = ()
    transfers: Text = NO_TRANSFER
    contracted_by: str = "controller"  # for a sub-processor: whose sub-processor


@dataclass(frozen=True)
class NotRecipient:
    """Named by a seed, but receives nothing personal from the controller (not Art. 19)."""

    key: str
    legal_name: str
    address: str
    seed: str
    service: Text
    why: Text
    locations: Text


# Deletion classes ----------------------------------------------------------------------
CLASSES: tuple[DeletionClass, ...] = (
    DeletionClass("LK-W0", Start.consent_withdrawn, 0, Text("sofort nach Widerruf", "at once after withdrawal")),
    DeletionClass(
        "LK-E0", Start.conversation_ended, 0, Text("sofort nach Zweckerfüllung", "at once when the purpose is met")
    ),
    DeletionClass("LK-A0", Start.erasure_request, 0, Text("auf Löschantrag", "on an erasure request")),
    DeletionClass("LK-C0", Start.contract_ended, 0, Text("bei Vertragsende", "when the contract ends")),
    DeletionClass("LK-O21", Start.signup_unconfirmed, 21, Text("21 Tage nach Anmeldung", "21 days after sign-up")),
    DeletionClass("LK-O30", Start.signup_unconfirmed, 30, Text("30 Tage nach Anmeldung", "30 days after sign-up")),
    DeletionClass(
        "LK-T30",
        Start.last_appointment,
        30,
        Text("30 Tage nach dem letzten Termin", "30 days after the last appointment"),
    ),
    DeletionClass("LK-I30", Start.card_issued, 30, Text("30 Tage nach Ausstellung", "30 days after issue")),
    DeletionClass(
        "LK-V90", Start.consultation_ended, 90, Text("90 Tage nach der Beratung", "90 days after the consultation")
    ),
)

# ASSUMED (no seed states it): the controller's database backups rotate after 35 days, so a
# deleted record is gone from every backup at most 35 days after its deletion.
CONTROLLER_BACKUP_DAYS = 35

_CONSENT = Text(
    "Art. 6 Abs. 1 lit. a, Art. 7 DSGVO: ohne Einwilligung kein Zweck; Art. 17 Abs. 1 lit. b DSGVO",
    "Art. 6(1)(a), 7 GDPR: no purpose without consent; Art. 17(1)(b) GDPR",
)

# Deletion rules ------------------------------------------------------------------------
OPTIN_NEWSLETTER = DeletionRule(
    "R01",
    Text("Unbestätigte Newsletter-Anmeldung", "unconfirmed newsletter sign-up"),
    "controller",
    Start.signup_unconfirmed,
    30,
    "LK-O30",
    Text(
        "Seed 000: „nach 30 Tagen automatisch wieder gelöscht“; Art. 5 Abs. 1 lit. e DSGVO",
        "seed 000: 'automatically deleted after 30 days'; Art. 5(1)(e) GDPR",
    ),
    "expire-unconfirmed-optins",
    setting="optin_expiry_days_newsletter",
    backup_days=CONTROLLER_BACKUP_DAYS,
)
OPTIN_SERVICE_OFFERS = DeletionRule(
    "R02",
    Text("Unbestätigte Anmeldung Mehrwert- und Serviceangebote", "unconfirmed service-offers sign-up"),
    "controller",
    Start.signup_unconfirmed,
    21,
    "LK-O21",
    Text(
        "Seed 000: „nach 21 Tagen automatisch wieder gelöscht“; Art. 5 Abs. 1 lit. e DSGVO",
        "seed 000: 'automatically deleted after 21 days'; Art. 5(1)(e) GDPR",
    ),
    "expire-unconfirmed-optins",
    setting="optin_expiry_days_service_offers",
    backup_days=CONTROLLER_BACKUP_DAYS,
)
NEWSLETTER_RECEIVER = DeletionRule(
    "R03",
    Text("Newsletter-Empfänger bei CleverReach", "newsletter receiver at CleverReach"),
    "cleverreach",
    Start.consent_withdrawn,
    0,
    "LK-W0",
    _CONSENT,
    "sync-newsletter-consents",
)
SERVICE_OFFERS_RECEIVER = DeletionRule(
    "R04",
    Text("Empfänger Mehrwert- und Serviceangebote bei CleverReach", "service-offers receiver at CleverReach"),
    "cleverreach",
    Start.consent_withdrawn,
    0,
    "LK-W0",
    _CONSENT,
    "sync-newsletter-consents",
)
NEWSLETTER_PRODUCTION = DeletionRule(
    "R05",
    Text("Newsletter-Daten in Bearbeitung durch USU", "newsletter data worked on by USU"),
    "usu",
    Start.erasure_request,
    0,
    "LK-A0",
    Text(
        "Art. 17 Abs. 1 lit. b, Art. 19 DSGVO; USU arbeitet auf den Daten in CleverReach (Seed 000)",
        "Art. 17(1)(b), 19 GDPR; USU works on the data in CleverReach (seed 000)",
    ),
    "manual",
)
TIMIFY_CUSTOMER = DeletionRule(
    "R06",
    Text("TIMIFY-Kunde mit seinen Terminen", "TIMIFY customer with their appointments"),
    "timify",
    Start.last_appointment,
    30,
    "LK-T30",
    Text(
        "Seed 001: „Daten werden nicht dauerhaft auf Servern am Netz vorgehalten“; "
        "Art. 5 Abs. 1 lit. e DSGVO; keine gesetzliche Aufbewahrungspflicht für Terminbuchungen",
        "seed 001: 'data are not held permanently on servers on the net'; Art. 5(1)(e) GDPR; "
        "no statutory retention duty for bookings",
    ),
    "enforce-retention",
    setting="timify.customer_retention_days",
)
VIDEO_CHAT = DeletionRule(
    "R07",
    Text("Videochat-Daten bei Flexperto", "video chat data at Flexperto"),
    "flexperto",
    Start.consultation_ended,
    90,
    "LK-V90",
    Text(
        "Seed 001: „Die Daten des Chats werden spätestens nach 90 Tagen gelöscht“",
        "seed 001: 'chat data are deleted after 90 days at the latest'",
    ),
    "purge-video-chat-data",
    setting="video_chat_retention_days",
)
ISIC_DOCUMENTS = DeletionRule(
    "R08",
    Text("Hochgeladene Nachweise zum Studentenausweis", "documents uploaded for the student ID"),
    "controller",
    Start.card_issued,
    30,
    "LK-I30",
    Text(
        "Seed 003 XIV: nur bis Bestellung und Rück- oder Nachfragen abgeschlossen sind; Art. 5 Abs. 1 lit. c, e DSGVO",
        "seed 003 XIV: only until the order and follow-up questions are done; Art. 5(1)(c), (e) GDPR",
    ),
    "purge-student-id-documents",
    setting="isic.document_retention_days",
    backup_days=CONTROLLER_BACKUP_DAYS,
)
ISIC_CARDHOLDER = DeletionRule(
    "R09",
    Text("Karteninhaber beim Aussteller", "cardholder at the issuer"),
    "isic",
    Start.contract_ended,
    0,
    "LK-C0",
    Text(
        "Seed 003 XIV: für die Dauer des Vertragsverhältnisses (Konto); danach vorbehaltlich "
        "§ 257 HGB, § 147 AO gelöscht; auf Stornierung oder Löschantrag (Art. 17 DSGVO)",
        "seed 003 XIV: for the contract's duration (account); then deleted subject to "
        "s. 257 HGB, s. 147 AO; on cancellation or erasure request (Art. 17 GDPR)",
    ),
    "fan-out-erasure",
)
NECT_CASE = DeletionRule(
    "R10",
    Text("Identifizierungsvorgang bei Nect (pseudonyme ID)", "identification case at Nect (pseudonymous id)"),
    "nect",
    Start.erasure_request,
    0,
    "LK-A0",
    Text(
        "Seed 002 5.4.2: Nect erhält nur eine pseudonyme ID; Art. 17 DSGVO",
        "seed 002 5.4.2: Nect receives a pseudonymous id only; Art. 17 GDPR",
    ),
    "fan-out-erasure",
)
CALL_NOTE = DeletionRule(
    "R11",
    Text("Gesprächsnotiz des Telefonsekretariats", "call note taken by the phone secretary"),
    "emilie",
    Start.conversation_ended,
    0,
    "LK-E0",
    Text(
        "Seed 004: „Die Daten werden nach Beendigung der Kommunikation gelöscht“; Zugriffsdaten 7 Tage",
        "seed 004: 'data are deleted once the communication has ended'; access logs 7 days",
    ),
    "manual",
)

RULES: tuple[DeletionRule, ...] = (
    OPTIN_NEWSLETTER,
    OPTIN_SERVICE_OFFERS,
    NEWSLETTER_RECEIVER,
    SERVICE_OFFERS_RECEIVER,
    NEWSLETTER_PRODUCTION,
    TIMIFY_CUSTOMER,
    VIDEO_CHAT,
    ISIC_DOCUMENTS,
    ISIC_CARDHOLDER,
    NECT_CASE,
    CALL_NOTE,
)

# Allow-lists ---------------------------------------------------------------------------
# CleverReach receivers: top-level keys, then global_attributes.* and attributes.*.
_RECEIVER = frozenset({"email", "source", "registered", "activated", "deactivated"})
_NAMES = frozenset({"global_attributes.salutation", "global_attributes.firstname", "global_attributes.lastname"})
_PROOF = frozenset({"attributes.signup_ip", "attributes.confirm_ip", "attributes.policy_version"})
_OPTIN = Text(
    "Opt-In-Daten (IP-Adresse, Datum und Uhrzeit von Anmeldung und Bestätigung)",
    "opt-in data (IP address, date and time of sign-up and confirmation)",
)
_NAME_MAIL = Text("Anrede, Vor- und Nachname, E-Mail-Adresse", "salutation, first and last name, e-mail address")

NEWSLETTER = Purpose(
    "consent:newsletter",
    Text("Newsletter-Versand", "sending the newsletter"),
    "000",
    Text("Newsletter-Abonnenten", "newsletter subscribers"),
    (_NAME_MAIL, _OPTIN),
    _RECEIVER | _NAMES | _PROOF,
    "Art. 6 Abs. 1 lit. a DSGVO (Einwilligung)",
    NEWSLETTER_RECEIVER,
)
SERVICE_OFFERS = Purpose(
    "consent:service_offers",
    Text("Mehrwert- und Serviceangebote, Kundenbefragungen", "service offers and customer surveys"),
    "000",
    Text("Versicherte, die sich angemeldet haben", "insured persons who signed up"),
    (_NAME_MAIL, Text("Versichertennummer", "insurance number"), _OPTIN),
    _RECEIVER | _NAMES | _PROOF | {"attributes.insurance_number"},
    "Art. 6 Abs. 1 lit. a DSGVO (Einwilligung)",
    SERVICE_OFFERS_RECEIVER,
)

PROCESSORS: tuple[Processor, ...] = (
    Processor(
        "cleverreach",
        "CleverReach GmbH & Co. KG",
        "Rastede (Seed 000 nennt nur den Sitz / seed 000 names the seat only)",
        Role.processor,
        "000",
        Text("E-Mail-Marketing-Tool: Verwaltung der Daten und Versand", "e-mail marketing: data and sending"),
        Text("Deutschland und Irland", "Germany and Ireland"),
        (NEWSLETTER, SERVICE_OFFERS),
        Erasure(Mode.api),
        transfers=Text("keine (Server in Deutschland und Irland, EU)", "none (servers in Germany and Ireland, EU)"),
    ),
    Processor(
        "usu",
        "USU GmbH",
        "Berlin (Seed 000 nennt nur den Sitz / seed 000 names the seat only)",
        Role.processor,
        "000",
        Text("Erstellung und Programmierung des Newsletters", "building and programming the newsletter"),
        NOT_STATED,
        (
            Purpose(
                "consent:newsletter",
                Text(
                    "Erstellung des Newsletters (auf den Daten in CleverReach)",
                    "building the newsletter (on the data in CleverReach)",
                ),
                "000",
                Text("Newsletter-Abonnenten", "newsletter subscribers"),
                (_NAME_MAIL,),
                # USU gets nothing from us directly: it works on what CleverReach holds.
                frozenset(),
                "Art. 6 Abs. 1 lit. a DSGVO (Einwilligung)",
                NEWSLETTER_PRODUCTION,
            ),
        ),
        Erasure(
            Mode.manual,
            "USU GmbH, Berlin – Ansprechpartner laut Auftragsverarbeitungsvertrag",
            Text("Brief oder E-Mail", "letter or e-mail"),
        ),
        works_on=(("cleverreach", "consent:newsletter"),),
    ),
    Processor(
        "timify",
        "TerminApp GmbH (TIMIFY)",
        "München (Seed 001 nennt nur den Sitz / seed 001 names the seat only)",
        Role.processor,
        "001",
        Text("Online-Terminbuchung (Servicestelle und Videochat)", "online booking (service point and video chat)"),
        Text(
            "Deutschland; „Daten werden nicht dauerhaft auf Servern am Netz vorgehalten“",
            "Germany; 'data are not held permanently on servers on the net'",
        ),
        (
            Purpose(
                "booking",
                Text("Terminbuchung", "booking a consultation"),
                "001",
                Text("Kunden, die einen Beratungstermin buchen", "customers booking a consultation"),
                (
                    Text("Geschlecht/Anrede, Vor- und Nachname", "gender/salutation, first and last name"),
                    Text("Telefonnummer, E-Mail-Adresse", "phone number, e-mail address"),
                    Text("Krankenversichertennummer oder Geburtsdatum", "insurance number or birth date"),
                    Text(
                        "Beratungsanliegen (freiwillig), Datum und Uhrzeit des Termins",
                        "concern (optional), date and time",
                    ),
                ),
                frozenset(
                    {"salutation", "first_name", "last_name", "phone", "email", "insurance_number", "birth_date"}
                ),
                "Art. 6 Abs. 1 Satz 1 lit. b und f DSGVO",
                TIMIFY_CUSTOMER,
                local="appointments",
            ),
        ),
        Erasure(Mode.api),
        sub_processors=("flexperto",),
    ),
    Processor(
        "flexperto",
        "Flexperto GmbH",
        "Berlin (Seed 001 nennt nur den Sitz / seed 001 names the seat only)",
        Role.sub_processor,
        "001",
        Text("Videochat der Kundenberatung", "video chat of the consultation"),
        Text(
            "Deutschland (Seed 001: alle Daten auf Servern in Deutschland)",
            "Germany (seed 001: all data on servers in Germany)",
        ),
        (
            Purpose(
                "video:",
                Text("Kundenberatung per Videochat", "consultation by video chat"),
                "001",
                Text("Kunden in der Videoberatung", "customers in a video consultation"),
                (
                    Text("Kontaktdaten (Telefon, E-Mail)", "contact data (phone, e-mail)"),
                    Text(
                        "Kommunikations- und Inhaltsdaten (Audio/Video, geteilte Dateien, Textchat)",
                        "communication and content data (audio/video, shared files, text chat)",
                    ),
                    Text("Aktivitäts- und Server-Protokolle", "activity and server logs"),
                ),
                frozenset({"external_id", "email", "phone"}),
                "Art. 6 Abs. 1 Satz 1 lit. b und f DSGVO",
                VIDEO_CHAT,
            ),
        ),
        Erasure(Mode.api),
        contracted_by="timify",
    ),
    Processor(
        "isic",
        "RDS Reisedienst Deutscher Studentenschaften GmbH (ISIC-Ausstellerin)",
        NOT_STATED.de + " / " + NOT_STATED.en,
        Role.processor,
        "003",
        Text("Ausstellung des internationalen Studentenausweises", "issuing the international student ID"),
        NOT_STATED,
        (
            Purpose(
                "student-id:",
                Text("Bestellung des Studentenausweises (ISIC)", "ordering the student ID (ISIC)"),
                "003",
                Text("Kunden, die einen Ausweis bestellen", "customers ordering a card"),
                (
                    Text("Vor- und Nachname, Geburtsdatum, E-Mail-Adresse", "first and last name, birth date, e-mail"),
                    Text("Hochschule und Status (Studierende/Schüler)", "institution and status (student/pupil)"),
                    Text("Passfoto", "passport photo"),
                ),
                # Seed 003 lists more (IBAN, postcode, documents): the issuer's API has no
                # place for them and the card does not need them, so they never go.
                frozenset(
                    {
                        "cardholderId",
                        "firstName",
                        "lastName",
                        "dateOfBirth",
                        "email",
                        "institutionName",
                        "studentStatus",
                    }
                ),
                "Art. 6 Abs. 1 lit. b DSGVO (und lit. a)",
                ISIC_CARDHOLDER,
                hold_while="order_in_progress",
            ),
        ),
        Erasure(Mode.api),
    ),
    Processor(
        "nect",
        "Nect GmbH",
        "Großer Burstah 21, 20457 Hamburg",
        Role.processor,
        "002",
        Text(
            "Identifizierung mit der eID („Nect Ident mit eID“)", "identification with the eID ('Nect Ident mit eID')"
        ),
        NOT_STATED,
        (
            Purpose(
                "ident:",
                Text("Online-Identifizierung bei der Registrierung", "online identification at registration"),
                "002",
                Text("App-Nutzer bei der Registrierung", "app users registering"),
                (Text("pseudonyme ID-Nummer", "pseudonymous id number"),),
                frozenset({"reference"}),
                "Art. 6 Abs. 1 Satz 1 lit. a DSGVO (Einwilligung)",
                NECT_CASE,
            ),
        ),
        Erasure(Mode.api),
    ),
    Processor(
        "emilie",
        "Milliways Infodesign GmbH (Telefonsekretariat Emilie®)",
        "Hannover (Seed 004 nennt nur den Sitz / seed 004 names the seat only)",
        Role.processor,
        "004",
        Text("Telefonsekretariat: Annahme von Anrufen im Auftrag", "phone secretary: taking calls on our behalf"),
        Text(
            "ausschließlich EU/EWR (Seed 004: „Mitgliedsstaat der EU oder EWR“)",
            "EU/EEA only (seed 004: 'member state of the EU or EEA')",
        ),
        (
            Purpose(
                "call:",
                Text("Annahme von Anrufen, Gesprächsnotiz", "taking calls, call note"),
                "004",
                Text("Anrufende", "callers"),
                (
                    Text("Name, Telefonnummer", "name, phone number"),
                    Text("Nachricht/Anliegen", "message/concern"),
                ),
                frozenset({"name", "phone", "message"}),
                # ASSUMED: seed 004 is Emilie's own policy and names no basis for our calls.
                "Art. 6 Abs. 1 lit. b und f DSGVO",
                CALL_NOTE,
            ),
        ),
        Erasure(
            Mode.manual,
            "Milliways Infodesign GmbH, Telefonsekretariat Emilie, Hannover – Datenschutzbeauftragte",
            Text("Brief oder E-Mail", "letter or e-mail"),
        ),
    ),
)

NOT_RECIPIENTS: tuple[NotRecipient, ...] = (
    NotRecipient(
        "docyet",
        "DOCYET GmbH",
        "Floßplatz 6, 04107 Leipzig",
        "002",
        Text("Symptom-Checker in der App", "symptom checker in the app"),
        Text(
            "Direkte Verbindung der App zu DOCYET; „Eine Datenübermittlung an uns erfolgt nicht“, und wir "
            "übermitteln nichts: DOCYET ist selbst Verantwortlicher (Einwilligung nach Art. 9 Abs. 2 lit. a DSGVO)",
            "the app connects to DOCYET directly; 'no data are transferred to us', and we send nothing: DOCYET "
            "is a controller itself (consent under Art. 9(2)(a) GDPR)",
        ),
        NOT_STATED,
    ),
    NotRecipient(
        "firebase-crashlytics",
        "Google Ireland Ltd. (Firebase Crashlytics)",
        "Google Building Gordon House, Barrow Street, Dublin 4, Irland",
        "002",
        Text("Absturzberichte der mobilen App", "crash reports of the mobile app"),
        Text(
            "Nur anonyme Absturzberichte, „keine personenbezogenen Daten“, nur mit Zustimmung, nur in der App",
            "anonymous crash reports only, 'no personal data', only with consent, app only",
        ),
        Text("USA (anonyme Daten)", "USA (anonymous data)"),
    ),
)


# Look-ups ------------------------------------------------------------------------------
_BY_KEY: Mapping[str, Processor] = {p.key: p for p in PROCESSORS}
_CLASSES: Mapping[str, DeletionClass] = {c.id: c for c in CLASSES}


def processor(key: str) -> Processor:
    """The catalogue entry of `key`; KeyError when the catalogue does not know it."""
    return _BY_KEY[key]


def known(key: str) -> bool:
    return key in _BY_KEY


def purpose_of(processor_key: str, purpose: str) -> Purpose | None:
    """The declared purpose a register purpose belongs to ("video:B-1" → the "video:" one)."""
    entry = _BY_KEY.get(processor_key)
    if entry is None:
        return None
    return next((p for p in entry.purposes if p.matches(purpose) or p.key == purpose), None)


def allowed_fields(processor_key: str, purpose: str) -> frozenset[str]:
    """The allow-list of a processor for a purpose (what its connector lets through)."""
    found = purpose_of(processor_key, purpose)
    if found is None:
        raise KeyError(f"no purpose {purpose} declared for {processor_key}")
    return found.fields


def nested_fields(processor_key: str, purpose: str, top: str = "receiver") -> dict[str, frozenset[str]]:
    """The allow-list split by its dotted prefixes; undotted names go under `top`.

    >>> sorted(nested_fields("cleverreach", "consent:newsletter")["global_attributes"])
    ['firstname', 'lastname', 'salutation']
    """
    groups: dict[str, set[str]] = {top: set()}
    for name in allowed_fields(processor_key, purpose):
        prefix, dot, rest = name.partition(".")
        groups.setdefault(prefix if dot else top, set()).add(rest if dot else name)
    return {key: frozenset(value) for key, value in groups.items()}


def co_recipients(processor_key: str, purpose: str) -> tuple[str, ...]:
    """Who else receives whenever `processor_key` receives for `purpose` (``works_on``)."""
    return tuple(
        p.key
        for p in PROCESSORS
        for on, on_purpose in p.works_on
        if on == processor_key
        and (purpose == on_purpose or (on_purpose.endswith(":") and purpose.startswith(on_purpose)))
    )


def manual_processors() -> dict[str, str]:
    """Processor key → to whom a manual request goes, for every processor without an API."""
    return {p.key: f"{p.legal_name}, {p.address}" for p in PROCESSORS if p.erasure.mode == Mode.manual}


def api_processors() -> tuple[str, ...]:
    return tuple(p.key for p in PROCESSORS if p.erasure.mode == Mode.api)


def deletion_class(class_id: str) -> DeletionClass:
    return _CLASSES[class_id]


def rule(rule_id: str) -> DeletionRule:
    return next(r for r in RULES if r.id == rule_id)


def check() -> list[str]:
    """Inconsistencies in the catalogue itself (empty when sound); a test asserts it."""
    problems = []
    keys = set(_BY_KEY) | {n.key for n in NOT_RECIPIENTS}
    for p in PROCESSORS:
        for sub in p.sub_processors:
            if sub not in _BY_KEY or _BY_KEY[sub].contracted_by != p.key:
                problems.append(f"{p.key}: sub-processor {sub} not declared as contracted by it")
        for on, on_purpose in p.works_on:
            if purpose_of(on, on_purpose) is None:
                problems.append(f"{p.key}: works on unknown {on} {on_purpose}")
        if p.erasure.mode == Mode.manual and not p.erasure.contact:
            problems.append(f"{p.key}: manual erasure without a contact")
        for purpose in p.purposes:
            if purpose.rule.holder != p.key:
                problems.append(f"{p.key} {purpose.key}: rule {purpose.rule.id} is held by {purpose.rule.holder}")
    for r in RULES:
        klass = _CLASSES.get(r.deletion_class)
        if klass is None or klass.start != r.start or klass.period_days != r.period_days:
            problems.append(f"rule {r.id}: class {r.deletion_class} does not match its start and period")
        if r.holder != "controller" and r.holder not in keys:
            problems.append(f"rule {r.id}: unknown holder {r.holder}")
    return problems
