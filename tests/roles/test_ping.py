"""`fltac collaborator ping`: OK for an authorised site, the exact refusal reason (exit 1) otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from roles_harness import make_fed, start, tiny_plan

from fltac_secure.cli import main
from fltac_secure.federation.demo import write_plan
from fltac_secure.pki import revoke


def ping(plan: Path, site: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["collaborator", "ping", "--plan", str(plan), "--site", str(site), "--timeout", "10"])
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out + out.err


def test_ping_ok_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fltac_secure.federation.demo import publish_crl

    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=1, round_s=5.0))
    revoke("site3", fed.layout.ca_dir)
    publish_crl(fed.layout)
    agg = start(fed.aggregator(join_window=8.0))
    try:
        code, text = ping(fed.layout.plan_path, fed.layout.site_file("site1"), capsys)
        assert code == 0 and "OK: site1 is authenticated and authorised" in text, text

        other = write_plan(tiny_plan(rounds=5), tmp_path / "other-plan.yaml")
        code, text = ping(other, fed.layout.site_file("site2"), capsys)
        assert code == 1 and "plan_mismatch" in text and "Traceback" not in text, text

        code, text = ping(fed.layout.plan_path, fed.layout.site_file("site3"), capsys)
        assert code == 1 and "revoked" in text, text

        code, text = ping(fed.layout.plan_path, fed.layout.site_file("site2"), capsys)
        assert code == 0, text  # the aggregator still serves good sites after the refusals
    finally:
        agg.join(60)  # no site joins: the aggregator stops on quorum by itself
