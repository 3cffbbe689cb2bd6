"""The ToxWatch exception tree.

::

    ToxWatchError
    ├── ProtocolViolation        a command the rules forbid (domain guards, ``check_*``)
    │   ├── AlertAlreadyAcknowledged
    │   └── AlertRevisionChanged
    ├── NotFound                 an aggregate or view row that does not exist
    ├── AccessError              (domain.access) token grants; AuthenticationFailed (services)
    ├── DeliveryFailed           (infra.channels) one failed alert delivery attempt
    └── AuditError               (services.audit) a missing key, a refused checkpoint
"""

from __future__ import annotations


class ToxWatchError(Exception):
    """Base of every error ToxWatch raises on purpose."""


class ProtocolViolation(ToxWatchError):
    """A command that the rules forbid in the current state."""


class AlertAlreadyAcknowledged(ProtocolViolation):
    """The alert's current revision is already acknowledged."""


class AlertRevisionChanged(ProtocolViolation):
    """The acknowledgement names a revision the alert has moved past: the user has
    not seen what changed."""


class NotFound(ToxWatchError):
    """No such aggregate or row (for the API: 404)."""
