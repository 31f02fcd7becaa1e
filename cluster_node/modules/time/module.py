"""Entity Time (XEP-0202) of the server: its UTC time and its offset from UTC (XEP-0082 formats)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from ...core.module import Module, ModuleHost, Xep
from ...core.router import IqRequest
from ...xmpp import errors

__all__ = ["EntityTime", "TIME", "time_element"]

TIME = "urn:xmpp:time"
T = f"{{{TIME}}}"


def _tzo(offset: timedelta | None) -> str:
    """XEP-0082 TZD: ``+hh:mm`` / ``-hh:mm`` (``+00:00`` for UTC, as XEP-0202 shows it)."""
    minutes = int((offset or timedelta()).total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def time_element(now: datetime) -> ET.Element:
    """``<time/>`` for the aware datetime ``now`` (its offset is the server's time zone)."""
    el = ET.Element(T + "time")
    ET.SubElement(el, T + "tzo").text = _tzo(now.utcoffset())
    utc = now.astimezone(UTC)
    ET.SubElement(el, T + "utc").text = utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    return el


class EntityTime(Module):
    name = "time"
    description = "Entity Time of the server"
    xeps = (Xep(202, "2.0"),)

    def start(self, host: ModuleHost) -> None:
        self.host = host
        host.add_server_iq(TIME, "time", self._time)

    async def _time(self, req: IqRequest) -> ET.Element:
        if req.stanza.type != "get":
            raise errors.BadRequest()
        return time_element(datetime.now().astimezone())
