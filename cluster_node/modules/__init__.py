"""The built-in feature modules, by name: what ``[modules.<name>]`` tables may configure.

Each module is a package of its own (its module class, its sans-IO protocol where it has one, its
storage needs); none imports another — they meet on hooks.  Order here is start order, which
respects ``depends``.
"""

from __future__ import annotations

from ..core.module import Module
from .blocking import Blocking
from .carbons import Carbons
from .contact_addresses import ContactAddresses
from .csi import Csi
from .disco import Disco
from .external_services import ExternalServices
from .fast import Fast
from .http_upload import HttpUpload
from .last import LastActivity
from .mam import Mam
from .muc import Muc
from .offline import Offline
from .pep import Pep
from .ping import Ping
from .presence import Presence
from .private import PrivateStorage
from .push import Push
from .register import Register
from .roster import Roster
from .stream_management import StreamManagement
from .time import EntityTime
from .vcard import Vcard
from .version import Version

__all__ = ["BUILTIN", "Module"]

BUILTIN: dict[str, type[Module]] = {m.name: m for m in (
    Roster, Presence, Offline, Disco, Ping, Version, Register, StreamManagement, Csi, Carbons, Mam,
    Vcard, PrivateStorage, EntityTime, LastActivity, ContactAddresses, ExternalServices,
    Blocking, HttpUpload, Push, Pep, Fast, Muc,
)}
