"""Who may open a session: the checks the server runs after a TLS handshake.

OpenSSL has already verified the chain, the CRL and the key usage; this is
authorisation, in a fixed order, default deny:

1. the certificate is a collaborator certificate: its extended key usage is
   clientAuth (OpenSSL's purpose check passes a certificate with no extended
   key usage at all, so a CA-signed certificate made for something else would
   otherwise be accepted as a client);
2. the certificate's CN is in the plan's roster (enrolled is not authorised);
3. the CN equals the name the client claims in its HELLO (a site cannot act
   under another site's name);
4. the client runs the same federation and plan (same plan hash).

Each refusal carries a reason code for programs and a sentence for people.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from fltac_secure.transport.envelope import HELLO, Message


@dataclass(frozen=True)
class Refusal:
    """Why a session is refused: ``reason`` (machine code) and ``detail`` (sentence)."""

    reason: str
    detail: str


def differing_sections(theirs: object, ours: Mapping[str, str]) -> list[str]:
    """Plan sections whose hashes differ; ``theirs`` is HELLO meta ``plan_sections``, a list of
    "section=hash" strings (``plan.section_hashes``); [] if the client sent none."""
    if not isinstance(theirs, list) or not ours:
        return []
    pairs = dict(item.split("=", 1) for item in theirs[:64] if isinstance(item, str) and "=" in item)
    return sorted(k for k in ours if pairs.get(k) != ours[k])  # only our own section names are ever echoed


def admit(
    cn: str, hello: Message, *, roster: Collection[str], federation: str, plan_hash: str, role: str | None,
    plan_sections: Mapping[str, str] | None = None,
) -> Refusal | None:
    """None if the peer may proceed, else the first ``Refusal`` in the fixed order."""
    if hello.kind != HELLO:
        return Refusal("protocol", f"expected HELLO after the handshake, got {hello.kind}")
    if role != "collaborator":
        return Refusal(
            "wrong_role",
            f"certificate for {cn!r} is not a collaborator certificate (extended key usage must be clientAuth "
            "alone); enroll the site with `fltac certs request --role collaborator`",
        )
    if cn not in roster:
        return Refusal("not_in_roster", f"certificate for {cn!r} is not in this plan's roster")
    claimed = hello.meta.get("name", hello.sender)
    if claimed != cn or hello.sender != cn:
        return Refusal(
            "name_mismatch",
            f"certificate is for {cn!r} but the client claims to be {claimed!r}; use the site's own certificate",
        )
    if hello.federation != federation:
        return Refusal(
            "wrong_federation", f"client is in federation {hello.federation!r}, this aggregator runs {federation!r}"
        )
    if hello.plan_hash != plan_hash:
        differ = differing_sections(hello.meta.get("plan_sections"), plan_sections or {})
        where = f" (sections that differ: {', '.join(differ)})" if differ else ""
        return Refusal(
            "plan_mismatch",
            f"client runs plan {hello.plan_hash[:12]!r}, this aggregator runs plan {plan_hash[:12]!r}{where}; "
            "use the same plan.yaml at every site (`fltac plan show` prints it with every default filled in)",
        )
    return None
