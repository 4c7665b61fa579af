"""Every flow by its deployment name: what ``psync run NAME`` and prefect.yaml refer to."""

from __future__ import annotations

from importlib import import_module

from prefect import Flow

# name -> "module:function"; imported lazily so `psync --help` stays fast.
FLOWS: dict[str, str] = {
    "sync-newsletter-consents": "flows.newsletter:sync_newsletter_consents",
    "pull-newsletter-unsubscribes": "flows.newsletter:pull_newsletter_unsubscribes",
    "expire-unconfirmed-optins": "flows.newsletter:expire_unconfirmed_optins",
    "push-bookings": "flows.bookings:push_bookings",
    "purge-video-chat-data": "flows.bookings:purge_video_chat_data",
    "forward-student-id-orders": "flows.student_id:forward_student_id_orders",
    "sync-student-id-order-status": "flows.student_id:sync_student_id_order_status",
    "purge-student-id-documents": "flows.student_id:purge_student_id_documents",
    "fan-out-erasure": "flows.erasure:fan_out_erasure",
    "follow-up-erasures": "flows.erasure:follow_up_erasures",
    "watch-erasure-deadlines": "flows.erasure:watch_erasure_deadlines",
    "enforce-retention": "flows.retention:enforce_retention",
    "consent-proof": "flows.consent_proof:consent_proof",
    "handle-rights-request": "flows.rights:handle_rights_request",
    "follow-up-rights-requests": "flows.rights:follow_up_rights_requests",
}


def get_flow(name: str) -> Flow:
    """The flow registered under `name`; KeyError lists the known names."""
    try:
        module, attr = FLOWS[name].split(":")
    except KeyError:
        raise KeyError(f"unknown flow {name!r}; known: {', '.join(sorted(FLOWS))}") from None
    return getattr(import_module(module), attr)
