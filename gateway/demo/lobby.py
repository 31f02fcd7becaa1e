"""The demo's group chat: a persistent room ``lobby@conference.example.com``, homed in eu, owned by
alice, with bob (in us) a member, made through eu's admin API once everything is up.

Made with MongooseIM's GraphQL operations (the same an operator would run), and idempotent: a
restart of the demo finds the room in the shared database and only checks its settings.
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

__all__ = ["LobbyError", "make_lobby"]


class LobbyError(Exception):
    """The admin API refused something the demo asked (its message says what)."""


async def _gql(http: aiohttp.ClientSession, url: str, auth: str, query: str, **variables: Any) -> dict[str, Any]:
    async with http.post(url, json={"query": query, "variables": variables},
                         headers={"Authorization": f"Basic {auth}"}) as resp:
        body = await resp.json()
    if body.get("errors"):
        raise LobbyError("; ".join(str(e.get("message")) for e in body["errors"]))
    return body.get("data") or {}


async def make_lobby(admin_url: str, admin: tuple[str, str], room: str, owner: str, members: list[str]) -> None:
    """``room`` exists, persistent and public, ``owner`` owns it and ``members`` are members."""
    auth = base64.b64encode(f"{admin[0]}:{admin[1]}".encode()).decode()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        try:
            await _gql(http, admin_url, auth, "mutation($room: JID!, $owner: JID!, $nick: String!) { muc { "
                       "createInstantRoom(room: $room, owner: $owner, nick: $nick) { jid } } }",
                       room=room, owner=owner, nick=owner.split("@", 1)[0])
        except LobbyError as e:
            if "exists" not in str(e):  # kept in the database since an earlier run
                raise
        await _gql(http, admin_url, auth, "mutation($room: JID!) { muc { changeRoomConfiguration(room: $room, "
                   "config: {title: \"Lobby\", persistent: true, public: true}) { persistent } } }", room=room)
        for member in members:
            await _gql(http, admin_url, auth, "mutation($room: JID!, $user: JID!) { muc { setUserAffiliation("
                       "room: $room, user: $user, affiliation: MEMBER) } }", room=room, user=member)
