"""SQLModel tables, one module per aggregate, and the one engine/session factory.

Importing this package registers every table on ``SQLModel.metadata`` (Alembic reads it).
"""

from models.audit import AuditEntry, AuditHead
from models.bookings import Booking
from models.consent import ConsentEvent, ConsentRecord
from models.consent_text import ConsentText
from models.cursors import Counter, SyncCursor
from models.documents import DocumentKey
from models.erasure import ErasureRequest, ErasureTask
from models.isic import IsicDocument, IsicOrder
from models.parked import ParkedItem
from models.receipts import IntakeReceipt
from models.recipients import Recipient
from models.restriction import Restriction, RestrictionHold
from models.rights import RightsRequest
from models.subjects import DataSubject

__all__ = [
    "AuditEntry",
    "AuditHead",
    "Booking",
    "ConsentEvent",
    "ConsentRecord",
    "ConsentText",
    "Counter",
    "DataSubject",
    "DocumentKey",
    "ErasureRequest",
    "ErasureTask",
    "IntakeReceipt",
    "IsicDocument",
    "IsicOrder",
    "ParkedItem",
    "Recipient",
    "Restriction",
    "RestrictionHold",
    "RightsRequest",
    "SyncCursor",
]
