"""`fltac ca init|sign|revoke|list|crl` and `fltac certs request|show`: thin wrappers over fltac_secure.pki."""

from __future__ import annotations

from pathlib import Path

import typer

from fltac_secure.cli.common import print_json
from fltac_secure.errors import PKIError
from fltac_secure.pki import (
    csr_fingerprint,
    describe_certificate,
    describe_request,
    init_ca,
    is_request,
    list_issued,
    make_request,
    refresh_crl,
    revoke,
    sign_request,
)
from fltac_secure.pki.files import read_bytes

ca_app = typer.Typer(
    help="Run the federation's certificate authority: create it, sign site requests, revoke sites.",
    no_args_is_help=True,
)
certs_app = typer.Typer(help="Site side: make a key and a signing request, inspect certificates.", no_args_is_help=True)

CA_DIR = typer.Option(..., "--ca-dir", help="The CA folder made by `fltac ca init`.", show_default=False)


@ca_app.command("init")
def ca_init(
    dir_: Path = typer.Option(..., "--dir", help="Folder for ca.key (0600), ca.crt, crl.pem and index.json.", show_default=False),
    name: str = typer.Option("fltac-ca", "--name", help="The CA's common name."),
    days: int = typer.Option(3650, "--days", help="Validity of the CA certificate in days."),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA (every issued certificate stops verifying)."),
) -> None:
    """Create a federation CA (ECDSA P-256) with an empty revocation list."""
    path = init_ca(dir_, name, days, force=force)
    typer.echo(f"CA {name!r} created: {path} (key {dir_ / 'ca.key'}, CRL {dir_ / 'crl.pem'})")
    typer.echo("give ca.crt to every site; keep ca.key secret")


@ca_app.command("sign")
def ca_sign(
    csr: Path = typer.Argument(..., help="The site's .csr file.", show_default=False),
    ca_dir: Path = CA_DIR,
    fingerprint: str | None = typer.Option(
        None, "--fingerprint", help="The CSR fingerprint the site read out to you (hex, colons and any case allowed)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Where to write the certificate [default: next to the CSR, .crt]."),
    days: int = typer.Option(365, "--days", help="Validity of the certificate in days."),
    renew: bool = typer.Option(False, "--renew", help="Replace the name's live certificate (the old one is revoked)."),
) -> None:
    """Sign a site's request after checking its fingerprint; without --fingerprint, print it and refuse."""
    if fingerprint is None:
        typer.echo(f"fingerprint: {csr_fingerprint(read_bytes(csr, 'CSR'))}")
    cert = sign_request(csr, ca_dir, fingerprint, out=out, days=days, renew=renew)
    info = describe_certificate(cert)
    typer.echo(
        f"issued {info['role']} certificate for {info['common_name']!r}: {cert} "
        f"(serial {info['serial']}, expires {info['not_after']}); CA certificate written to {cert.parent / 'ca.crt'}"
    )


@ca_app.command("revoke")
def ca_revoke(
    name: str = typer.Argument(..., help="The site name (certificate CN) to revoke.", show_default=False),
    ca_dir: Path = CA_DIR,
) -> None:
    """Revoke every certificate of a site and rewrite crl.pem; copy it to the aggregator's certs.crl path."""
    revoke(name, ca_dir)
    crl = ca_dir / "crl.pem"
    typer.echo(
        f"revoked {name!r}; the new CRL is {crl}.\n"
        f"Copy it over the file named by certs.crl in the aggregator's site file, e.g.\n"
        f"  cp {crl} <aggregator workspace>/certs/crl.pem\n"
        "A running aggregator re-reads that file within a second of the copy (or at once on `kill -HUP <pid>`),\n"
        f"ends {name!r}'s live session and refuses its next handshake. Nothing needs restarting."
    )


@ca_app.command("crl")
def ca_crl(
    ca_dir: Path = CA_DIR,
    days: int = typer.Option(90, "--days", help="Days until the CRL's next update."),
) -> None:
    """Re-sign crl.pem with a fresh next-update date (an expired CRL makes the aggregator refuse everyone)."""
    path = refresh_crl(ca_dir, crl_days=days)
    typer.echo(f"CRL refreshed: {path} (valid {days} days)")


@ca_app.command("list")
def ca_list(
    ca_dir: Path = CA_DIR,
    json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List issued certificates: name, role, serial, expiry, revoked or not."""
    issued = list_issued(ca_dir)
    if json_out:
        print_json([c.to_json() for c in issued])
        return
    if not issued:
        typer.echo("no certificates issued yet")
        return
    typer.echo(f"{'NAME':<20} {'ROLE':<13} {'SERIAL':<42} {'EXPIRES':<26} STATUS")
    for c in issued:
        status = f"revoked ({c.revocation_reason})" if c.revoked else "valid"
        typer.echo(f"{c.name:<20} {c.role:<13} {c.serial_hex:<42} {c.not_after.isoformat():<26} {status}")


@certs_app.command("request")
def certs_request(
    role: str = typer.Option(..., "--role", help="aggregator or collaborator.", show_default=False),
    name: str = typer.Option(..., "--name", help="This site's name (becomes the certificate CN).", show_default=False),
    out: Path = typer.Option(..., "--out", help="Folder for NAME.key (0600) and NAME.csr.", show_default=False),
    san: list[str] | None = typer.Option(
        None, "--san", help="Aggregator only: a DNS name or IP the collaborators connect to (repeatable; "
        "default: localhost and 127.0.0.1)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing key."),
) -> None:
    """Make this site's private key and signing request; read the printed fingerprint to the CA operator."""
    if role not in ("aggregator", "collaborator"):
        raise PKIError(f"invalid --role {role!r}: expected aggregator or collaborator")
    key, csr, fp = make_request(name, role, out, san or None, force=force)  # type: ignore[arg-type]
    typer.echo(f"key: {key} (keep it here, mode 0600)")
    typer.echo(f"request: {csr} (send it to the CA operator)")
    typer.echo(f"fingerprint: {fp}")


@certs_app.command("show")
def certs_show(
    cert: Path = typer.Argument(..., help="A certificate (PEM or DER), or this site's signing request (.csr).",
                                show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Show a certificate's subject, role, SANs, validity and SHA-256 fingerprint.

    Given a signing request (.csr), show its name, role and the fingerprint to read out to the CA operator.
    """
    request = is_request(cert)
    info = describe_request(cert) if request else describe_certificate(cert)
    if json_out:
        print_json(info)
        return
    keys = ("request_for", "role", "sans", "fingerprint") if request else (
        "subject", "issuer", "role", "sans", "serial", "not_before", "not_after", "fingerprint")
    for k in keys:
        v = ", ".join(info[k]) if k == "sans" else info[k]
        typer.echo(f"{k + ':':<13} {v if v not in (None, '') else '-'}")


def register(app: typer.Typer) -> None:
    """Add the `ca` and `certs` groups to the main app."""
    app.add_typer(ca_app, name="ca")
    app.add_typer(certs_app, name="certs")
