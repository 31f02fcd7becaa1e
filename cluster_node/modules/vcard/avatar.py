"""XEP-0398 without I/O: a vCard's ``PHOTO`` and the XEP-0084 avatar (the ``urn:xmpp:avatar:data``
and ``urn:xmpp:avatar:metadata`` PEP items), both ways.

* :func:`vcard_photo` — the image of a vCard's ``PHOTO/BINVAL`` (None: no photo, an empty one,
  or only an ``EXTVAL``); :class:`InvalidPhoto` when the BINVAL is not base64.
* :func:`avatar_items` — the data and metadata payloads for that image (XEP-0398 §3.2: the item
  id is the SHA-1 of the image, the metadata's one ``<info/>`` takes the vCard's ``TYPE``, its
  bytes, and the width and height when the image is a PNG, GIF or JPEG); :func:`empty_metadata`
  disables the avatar (XEP-0084 §4.6).
* :func:`metadata_choice` — which ``<info/>`` of a metadata item the vCard gets (§3.1: the first
  that does not point to a URL; an URL-only one as an ``EXTVAL``); None: no avatar.
* :func:`photo_from_data` — the image of a data item, checked against the info's id (§3.1: the
  SHA-1 of the image SHOULD match).
* :func:`with_photo` — a vCard with its ``PHOTO`` replaced or removed, everything else kept;
  :func:`photo_element`, :func:`external_photo_element` build the ``PHOTO``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = [
    "AVATAR_DATA", "AVATAR_METADATA", "CONVERSION", "InvalidPhoto", "Photo", "AvatarInfo", "vcard_photo",
    "avatar_items", "empty_metadata", "metadata_choice", "photo_from_data", "photo_element",
    "external_photo_element", "with_photo", "image_type", "image_size", "DISABLED_ID",
]

VCARD = "vcard-temp"
AVATAR_DATA = "urn:xmpp:avatar:data"  # XEP-0084
AVATAR_METADATA = "urn:xmpp:avatar:metadata"
CONVERSION = "urn:xmpp:pep-vcard-conversion:0"  # XEP-0398 §2
DISABLED_ID = "current"  # the item id of an empty metadata item (avatar disabled)
_V, _D, _M = f"{{{VCARD}}}", f"{{{AVATAR_DATA}}}", f"{{{AVATAR_METADATA}}}"
_OCTETS = "application/octet-stream"


class InvalidPhoto(ValueError):
    """A photo that cannot be an avatar: a BINVAL that is not base64, data that does not match its id."""


@dataclass(frozen=True, slots=True)
class Photo:
    image: bytes
    type: str

    @property
    def id(self) -> str:
        """XEP-0084 §4.2: the hex SHA-1 of the image (also XEP-0153's hash)."""
        return hashlib.sha1(self.image).hexdigest()


@dataclass(frozen=True, slots=True)
class AvatarInfo:
    """One ``<info/>`` of an avatar metadata item."""

    id: str
    type: str
    url: str | None = None


def _decode(text: str | None) -> bytes:
    data = "".join((text or "").split())
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPhoto("not base64") from None


def image_type(image: bytes) -> str | None:
    """The content type of the common avatar formats, from their first bytes."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if image.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if image.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_size(image: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, GIF or JPEG image, read from its header; None otherwise."""
    kind = image_type(image)
    if kind == "image/png" and len(image) >= 24 and image[12:16] == b"IHDR":
        w, h = struct.unpack(">II", image[16:24])
        return (w, h) if w and h else None
    if kind == "image/gif" and len(image) >= 10:
        w, h = struct.unpack("<HH", image[6:10])
        return (w, h) if w and h else None
    if kind == "image/jpeg":
        i = 2
        while i + 9 <= len(image):
            if image[i] != 0xFF:
                return None
            marker = image[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
                i += 2
                continue
            (length,) = struct.unpack(">H", image[i + 2:i + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
                h, w = struct.unpack(">HH", image[i + 5:i + 9])
                return (w, h) if w and h else None
            i += 2 + length
    return None


def vcard_photo(vcard: ET.Element) -> Photo | None:
    """The image of the vCard's ``PHOTO/BINVAL`` with its ``TYPE`` (sniffed when missing); None
    without one (no PHOTO, an empty BINVAL, an ``EXTVAL`` only).  Raises :class:`InvalidPhoto`."""
    photo = vcard.find(f"{_V}PHOTO")
    if photo is None:
        return None
    binval = photo.find(f"{_V}BINVAL")
    if binval is None or not "".join((binval.text or "").split()):
        return None
    image = _decode(binval.text)
    if not image:
        return None
    type_el = photo.find(f"{_V}TYPE")
    kind = (type_el.text or "").strip() if type_el is not None else ""
    return Photo(image, kind or image_type(image) or _OCTETS)


def avatar_items(photo: Photo) -> tuple[ET.Element, ET.Element]:
    """The ``<data/>`` and ``<metadata/>`` payloads to publish (both as item ``photo.id``)."""
    data = ET.Element(_D + "data")
    data.text = base64.b64encode(photo.image).decode("ascii")
    metadata = ET.Element(_M + "metadata")
    info = ET.SubElement(metadata, _M + "info", {"id": photo.id, "bytes": str(len(photo.image)),
                                                  "type": photo.type})
    size = image_size(photo.image)
    if size is not None:
        info.set("width", str(size[0]))
        info.set("height", str(size[1]))
    return data, metadata


def empty_metadata() -> ET.Element:
    """XEP-0084 §4.6: metadata without ``<info/>``: the avatar is disabled."""
    return ET.Element(_M + "metadata")


def metadata_choice(metadata: ET.Element | None) -> AvatarInfo | None:
    """The ``<info/>`` the vCard gets from a metadata payload: the first with an id and no url,
    else the first with a url; None for no metadata, an empty (disabled) one, or one without a
    usable info."""
    if metadata is None or metadata.tag != _M + "metadata":
        return None
    infos = [i for i in metadata.findall(_M + "info") if (i.get("id") or "").strip()]
    for info in infos:
        if not info.get("url"):
            return AvatarInfo(info.get("id", "").strip(), (info.get("type") or "").strip())
    for info in infos:
        return AvatarInfo(info.get("id", "").strip(), (info.get("type") or "").strip(), info.get("url"))
    return None


def photo_from_data(info: AvatarInfo, data: ET.Element) -> Photo:
    """The image of a ``<data/>`` payload, whose SHA-1 must be the info's id (raises
    :class:`InvalidPhoto` otherwise, or when it is not base64 or empty)."""
    if data.tag != _D + "data":
        raise InvalidPhoto("not avatar data")
    image = _decode(data.text)
    if not image:
        raise InvalidPhoto("no image")
    photo = Photo(image, info.type or image_type(image) or _OCTETS)
    if photo.id != info.id.lower():
        raise InvalidPhoto(f"the image's SHA-1 is {photo.id}, not the id {info.id}")
    return photo


def photo_element(photo: Photo) -> ET.Element:
    el = ET.Element(_V + "PHOTO")
    ET.SubElement(el, _V + "TYPE").text = photo.type
    ET.SubElement(el, _V + "BINVAL").text = base64.b64encode(photo.image).decode("ascii")
    return el


def external_photo_element(info: AvatarInfo) -> ET.Element:
    """A ``PHOTO`` pointing to an avatar stored elsewhere (an info with only a url)."""
    el = ET.Element(_V + "PHOTO")
    if info.type:
        ET.SubElement(el, _V + "TYPE").text = info.type
    ET.SubElement(el, _V + "EXTVAL").text = info.url or ""
    return el


def with_photo(vcard: ET.Element | None, photo: ET.Element | None) -> ET.Element:
    """A copy of ``vcard`` (an empty vCard when None) whose PHOTO is ``photo`` (None: no PHOTO),
    in the place of the first one it had, else last."""
    out = ET.Element(_V + "vCard", dict(vcard.attrib) if vcard is not None else {})
    placed = False
    for child in (vcard if vcard is not None else ()):
        if child.tag == _V + "PHOTO":
            if photo is not None and not placed:
                out.append(photo)
            placed = True
            continue
        out.append(child)
    if vcard is not None:
        out.text = vcard.text
    if photo is not None and not placed:
        out.append(photo)
    return out
