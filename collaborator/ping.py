"""`fltac collaborator ping`: connect and handshake only, to check a site's set-up before a run.

Needs no model, so it starts in well under a second.  Says OK, the aggregator's
exact reason for refusing this site, or that nothing answers at the endpoint.
"""

from __future__ import annotations

from fltac_secure.errors import TransportError
from fltac_secure.plan import Plan, Site, hello_sections, plan_hash


def ping(plan: Plan, site: Site, timeout: float) -> None:
    """Return when the aggregator authenticated and authorised this site; TransportError saying why not."""
    from fltac_secure.pki import context_for_site
    from fltac_secure.transport.client import TransportClient

    endpoint = site.aggregator or ""
    client = TransportClient(endpoint, context_for_site(site), site.name, plan.federation, plan_hash(plan),
                             server_hostname=site.server_name, handshake_timeout=plan.timeouts.handshake_s,
                             max_attempts=3, hello_meta={"plan_sections": hello_sections(plan)})
    try:
        client.connect(timeout=timeout)
    except TransportError as exc:
        if exc.reason in ("timeout", "unreachable") and not client.heard:
            raise TransportError(f"no aggregator at {endpoint}: nothing answered within {timeout:g} s; start it "
                                 "(`fltac aggregator start`), or check `aggregator` in this site's file", "unreachable") from None
        raise TransportError(f"refused or unreachable ({exc.reason}): {exc}", exc.reason) from None
    finally:
        client.close()
