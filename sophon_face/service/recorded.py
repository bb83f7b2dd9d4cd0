"""What the event service hands to the pushes once an event is committed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class RecordedEvent:
    """A committed event with the image bytes a push may send.

    ``record`` is the stored event record (``store/events.py``; ``events.render(record)``
    is the event of api/event.md 2). The images are the ones stored with the event, kept in
    memory so the real-time push never reads them back from disk.
    """

    record: Dict[str, Any]
    face_jpeg: Optional[bytes] = None
    spot_jpeg: Optional[bytes] = None
    register_jpeg: Optional[bytes] = None
