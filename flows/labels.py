"""What the flows' counts mean, in German and English: the rows of their count artifacts.

Every flow publishes a table of counts (``flows.common.counts_artifact``): no identifiers,
nothing personal. The data-protection officer reads it in the Prefect UI in German, the
on-call engineer in English; the counts' keys (``not_pushed_pending``, ``due_soon``) are
the code's. Here:

- ``LABELS``: every count key any flow can produce → (German, English). Some keys come from
  enums: ``not_pushed_<state>`` (``models.consent.ConsentState``), ``still_<status>`` (the
  card issuer's card status), the erasure task states (``models.erasure.TaskState``) and
  urgencies (``models.erasure.Urgency``). tests/flows/test_artifacts.py finds every key the
  flows count and fails on one missing here.
- ``FLOW_COUNTS``: per flow (the artifact's key), the counts it always reports, in the order
  shown, so a count that did not occur reads 0 instead of being absent.

``table`` builds the rows; a key that is neither listed nor labelled is shown all the same,
under its own name, so nothing is hidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

# The artifact's columns: the German label, the English label, the count.
COLUMNS = ("Was", "What", "Anzahl")
# Under the artifact's title: what the table holds.
COUNTS_ONLY = "Nur Zahlen, keine personenbezogenen Daten / Counts only, no personal data"


class Label(NamedTuple):
    de: str
    en: str


LABELS: dict[str, Label] = {
    # newsletter and service offers → CleverReach ----------------------------------------
    "pushed": Label("An den Auftragsverarbeiter gesendet", "Sent to the processor"),
    "not_pushed_pending": Label("Nicht gesendet: Anmeldung noch unbestätigt", "Not sent: sign-up not yet confirmed"),
    "not_pushed_withdrawn": Label("Nicht gesendet: Einwilligung widerrufen", "Not sent: consent withdrawn"),
    "not_pushed_expired": Label(
        "Nicht gesendet: Anmeldung abgelaufen (nie bestätigt)",
        "Not sent: sign-up expired (never confirmed)",
    ),
    "not_pushed_awaiting_signup": Label(
        "Nicht gesendet: Bestätigung, deren Anmeldung noch nicht eingegangen ist",
        "Not sent: a confirmation whose sign-up has not arrived yet",
    ),
    "removed": Label(
        "Beim Auftragsverarbeiter entfernt (Einwilligung erloschen)",
        "Removed at the processor (consent lapsed)",
    ),
    "remove_failed": Label(
        "Entfernen fehlgeschlagen, der nächste Lauf versucht es erneut",
        "Removal failed, the next run tries again",
    ),
    "inactive_at_processor": Label(
        "Bei CleverReach abgemeldete Empfänger (gelesen)",
        "Receivers unsubscribed at CleverReach (read)",
    ),
    "withdrawn": Label(
        "Neu als Widerruf erfasst (Abmeldelink im Newsletter)",
        "Newly recorded as withdrawal (unsubscribe link in a newsletter)",
    ),
    "expired": Label(
        "Unbestätigte Anmeldungen abgelaufen, Daten gelöscht",
        "Unconfirmed sign-ups expired, their data erased",
    ),
    "subjects_erased": Label(
        "Personendaten gelöscht (nichts anderes benötigt sie mehr)",
        "People's data erased (nothing else needs it)",
    ),
    # bookings → TIMIFY, video consultations → Flexperto ------------------------------------
    "video_registered": Label(
        "Videoberatung: Kunde bei Flexperto angelegt",
        "Video consultation: customer registered at Flexperto",
    ),
    "cancelled": Label("Stornierter Termin bei TIMIFY gelöscht", "Cancelled appointment deleted at TIMIFY"),
    "chat_purged": Label(
        "Video-Chatdaten bei Flexperto gelöscht, Löschung bestätigt",
        "Video chat data deleted at Flexperto, deletion verified",
    ),
    "purge_not_verified": Label(
        "Löschung bei Flexperto nicht bestätigt, bleibt fällig",
        "Deletion at Flexperto not verified, stays due",
    ),
    "skipped_erased": Label("Nicht gesendet: Person inzwischen gelöscht", "Not sent: person erased meanwhile"),
    # the delivery path (flows/delivery.py) ------------------------------------------------
    "parked": Label(
        "Zurückgestellt: dauerhaft fehlgeschlagen (psync parked list)",
        "Parked: failed for good (psync parked list)",
    ),
    "to_retry": Label(
        "Vorübergehend fehlgeschlagen: der nächste Lauf versucht es zuerst",
        "Failed for now: the next run tries it first",
    ),
    "held_erasure_open": Label(
        "Nicht gesendet: Löschantrag der Person offen", "Not sent: the person's erasure request is open"
    ),
    "not_found": Label("Angegebene Buchungsnummer nicht gefunden", "Booking id given but not found"),
    "due": Label("Zur Löschung fällige Videoberatungen", "Video consultations due for deletion"),
    # student ID (ISIC) → the card issuer ---------------------------------------------------
    "forwarded": Label("Bestellung an den Ausweis-Aussteller weitergeleitet", "Order forwarded to the card issuer"),
    "voided": Label("Karte gesperrt (Stornierung)", "Card voided (cancellation)"),
    "deletion_requested": Label(
        "Löschung beim Aussteller beantragt, Bestätigung ausstehend",
        "Deletion requested at the issuer, confirmation pending",
    ),
    "deletion_verified": Label("Löschung beim Aussteller bestätigt", "Deletion at the issuer verified"),
    "deletion_pending": Label("Löschung beim Aussteller weiterhin ausstehend", "Deletion at the issuer still pending"),
    "erased_locally": Label(
        "Stornierte Bestellung hier gelöscht, Löschung bestätigt",
        "Cancelled order erased here, erasure verified",
    ),
    "issued": Label("Karte ausgestellt (aktiv)", "Card issued (active)"),
    "still_pending": Label("Karte noch nicht ausgestellt", "Card not issued yet"),
    "still_voided": Label(
        "Karte beim Aussteller gesperrt, hier nicht storniert",
        "Card voided at the issuer, not cancelled here",
    ),
    "card_missing": Label("Karte beim Aussteller nicht gefunden", "Card not found at the issuer"),
    "documents_purged": Label(
        "Hochgeladene Unterlagen nach Ablauf der Aufbewahrung gelöscht",
        "Uploaded documents deleted after their retention",
    ),
    # erasure requests: task states (models.erasure.TaskState) -----------------------------
    "pending": Label("Löschung noch nicht angefragt", "Erasure not yet requested"),
    "requested": Label("Löschung wird angefragt", "Erasure being requested"),
    "awaiting_processor": Label(
        "Löschung angenommen, Bestätigung durch Abruf ausstehend",
        "Erasure accepted by the processor, read-back pending",
    ),
    "verified": Label("Löschung beim Auftragsverarbeiter bestätigt", "Erasure at the processor verified"),
    "restricted": Label(
        "Gesperrt statt gelöscht (gesetzliche Aufbewahrungspflicht)",
        "Restricted instead of erased (legal hold)",
    ),
    "manual_pending": Label(
        "Manuell anzufragen und mit Nachweis zu bestätigen",
        "To be requested by hand and confirmed with evidence",
    ),
    "failed": Label(
        "Löschung fehlgeschlagen, der nächste Lauf fragt erneut",
        "Erasure failed, the next run asks again",
    ),
    "claim_lost": Label("Von einem anderen Lauf übernommen", "Taken over by another run (claim lost)"),
    "completed": Label(
        "Löschanträge abgeschlossen (auch hier gelöscht)",
        "Erasure requests completed (erased here too)",
    ),
    "manual_reminders": Label(
        "Manuelle Löschanfragen unbestätigt: Erinnerung senden",
        "Manual erasure requests unconfirmed: send the reminder",
    ),
    # deletion rules (flows/retention.py) ---------------------------------------------------
    "retention_due": Label("Nach Löschregel fällig", "Due under a deletion rule"),
    "retention_deleted": Label("Beim Auftragsverarbeiter gelöscht und geprüft", "Deleted at the processor, verified"),
    "retention_awaiting": Label("Löschung angenommen, Prüfung folgt", "Deletion accepted, read back later"),
    "retention_failed": Label("Löschung fehlgeschlagen, nächster Lauf", "Deletion failed, the next run tries again"),
    "retention_overdue": Label("Über die Löschfrist hinaus gespeichert", "Kept past the deletion period"),
    "retention_held_by_restriction": Label(
        "Löschung ausgesetzt: Verarbeitung eingeschränkt (Art. 18)", "Held by restriction (Art. 18): not deleted"
    ),
    # erasure requests: urgency (models.erasure.Urgency) -----------------------------------
    "on_time": Label("Offene Löschanträge, Frist gewahrt", "Open erasure requests, on time"),
    "due_soon": Label(
        "Offene Löschanträge, Frist endet in höchstens 5 Tagen",
        "Open erasure requests, due within 5 days",
    ),
    "overdue": Label("Offene Löschanträge, Frist überschritten", "Open erasure requests, overdue"),
    "held_lawfully": Label(
        "Davon nur wegen gesetzlicher Aufbewahrungspflicht offen (beantwortet)",
        "Of these, open only for a legal hold (answered)",
    ),
    # erasure form runs tidied by the follow-up (flows.erasure_form.tidy_stale_runs) --------
    "opened": Label(
        "Formular-Lauf: Löschantrag eröffnet, Eingaben entfernt",
        "Form run: erasure request opened, identifiers blanked",
    ),
    "blanked": Label("Formular-Lauf abgebrochen: Eingaben entfernt", "Form run cancelled: identifiers blanked"),
    "refused": Label(
        "Formular-Lauf: Antrag abgelehnt, Eingaben entfernt",
        "Form run: request refused, identifiers blanked",
    ),
    # data-subject rights (access, portability, …) ------------------------------------------
    "still_open": Label("Noch offen, der nächste Lauf versucht es erneut", "Still open, the next run tries again"),
    "access_packages": Label("Auskunftspakete geschrieben (verschlüsselt)", "Access packages written (encrypted)"),
    "access_read_failed": Label(
        "Auftragsverarbeiter nicht lesbar: Auskunft noch nicht geschrieben",
        "Processor could not be read: access package not written yet",
    ),
    "portability_exports": Label(
        "Datenübertragbarkeit: Exporte geschrieben (verschlüsselt)", "Portability exports written (encrypted)"
    ),
    "outbox_purged": Label("Ausgabeordner: abgelaufene Pakete gelöscht", "Outbox: expired packages deleted"),
    # rectification, restriction, objection (flows/amend.py) ----------------------------------
    "rectified": Label("Bei Auftragsverarbeitern berichtigt (zurückgelesen)", "Corrected at processors (read back)"),
    "deactivated": Label(
        "Beim Auftragsverarbeiter gesperrt (Einschränkung)", "Made inactive at processors (restriction)"
    ),
    "consents_withdrawn": Label("Einwilligungen widerrufen (Widerspruch)", "Consents withdrawn (objection)"),
    "amend_letters": Label(
        "Schreiben an Auftragsverarbeiter erzeugt (ohne Schnittstelle)", "Letters for processors without an API call"
    ),
    "amend_failed": Label(
        "Auftragsverarbeiter nicht erreicht: Antrag bleibt offen", "Processor failed: the request stays open"
    ),
    "held_restricted": Label(
        "Zurückgehalten: Verarbeitung eingeschränkt (Art. 18) oder Berichtigung offen (Art. 16), geht danach",
        "Held back: processing restricted (Art. 18) or a rectification open (Art. 16), goes after it",
    ),
}


FLOW_COUNTS: dict[str, tuple[str, ...]] = {
    "sync-newsletter-consents": (
        "pushed",
        "not_pushed_pending",
        "not_pushed_withdrawn",
        "not_pushed_expired",
        "not_pushed_awaiting_signup",
        "removed",
        "remove_failed",
        "held_erasure_open",
        "held_restricted",
    ),
    "pull-newsletter-unsubscribes": ("inactive_at_processor", "withdrawn"),
    "expire-unconfirmed-optins": ("expired", "subjects_erased"),
    "push-bookings": (
        "pushed",
        "video_registered",
        "cancelled",
        "chat_purged",
        "purge_not_verified",
        "skipped_erased",
        "not_found",
        "held_erasure_open",
        "held_restricted",
        "parked",
        "to_retry",
    ),
    "purge-video-chat-data": ("due", "chat_purged", "purge_not_verified"),
    "forward-student-id-orders": (
        "forwarded",
        "skipped_erased",
        "voided",
        "deletion_requested",
        "deletion_verified",
        "erased_locally",
        "held_erasure_open",
        "held_restricted",
        "parked",
        "to_retry",
    ),
    "sync-student-id-order-status": (
        "issued",
        "still_pending",
        "still_voided",
        "card_missing",
        "deletion_verified",
        "deletion_pending",
    ),
    "purge-student-id-documents": ("documents_purged",),
    "follow-up-erasures": (
        "verified",
        "awaiting_processor",
        "failed",
        "restricted",
        "manual_pending",
        "claim_lost",
        "completed",
    ),
    "watch-erasure-deadlines": ("on_time", "due_soon", "overdue", "held_lawfully"),
    "handle-rights-request": (
        "completed",
        "still_open",
        "claim_lost",
        "access_packages",
        "portability_exports",
        "access_read_failed",
    ),
    "follow-up-rights-requests": (
        "completed",
        "still_open",
        "claim_lost",
        "access_packages",
        "portability_exports",
        "access_read_failed",
        "outbox_purged",
        "on_time",
        "due_soon",
        "overdue",
    ),
    "enforce-retention": (
        "retention_due",
        "retention_deleted",
        "retention_awaiting",
        "retention_failed",
        "retention_overdue",
        "retention_held_by_restriction",
    ),
}


def label(key: str) -> Label:
    """The key's labels; an unknown key is its own label in both languages."""
    return LABELS.get(str(key)) or Label(str(key), str(key))


def table(flow_key: str, counts: Mapping[str, int]) -> list[dict[str, str | int]]:
    """The artifact's rows: the flow's counts in their order (0 where absent), then any
    other count present, by key.

    >>> rows = table("expire-unconfirmed-optins", {"expired": 2, "surprise": 1})
    >>> [(row["What"], row["Anzahl"]) for row in rows]  # doctest: +NORMALIZE_WHITESPACE
    [('Unconfirmed sign-ups expired, their data erased', 2),
     ("People's data erased (nothing else needs it)", 0), ('surprise', 1)]
    """
    values = {str(key): value for key, value in counts.items()}
    listed = FLOW_COUNTS.get(flow_key, ())
    keys = [*listed, *sorted(set(values) - set(listed))]
    de, en, count = COLUMNS
    return [{de: label(key).de, en: label(key).en, count: values.get(key, 0)} for key in keys]
