"""`fltac site init`: a commented template per role that loads as it is and names every key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli_run import fltac

from fltac_secure.plan import DEMO_PLAN, load_plan, load_site
from fltac_secure.plan.site import CertPaths, Site, TaskData


@pytest.mark.parametrize("role", ["aggregator", "collaborator"])
def test_template_loads_and_documents_every_key(capsys: pytest.CaptureFixture[str], tmp_path: Path, role: str) -> None:
    out = tmp_path / "site.yaml"
    name = "aggregator" if role == "aggregator" else "site2"
    code, _, err = fltac(capsys, "site", "init", "--role", role, "--name", name, "--out", out, "--plan", DEMO_PLAN,
                         "--endpoint", "tcp://10.0.0.5:6000")
    assert code == 0, err
    plan = load_plan(DEMO_PLAN)
    site = load_site(out, plan)  # valid as written, against the plan
    assert site.role == role and site.name == name and site.workspace == tmp_path / "workspace"
    assert site.certs.cert == tmp_path / "certs" / f"{name}.crt"  # relative to the file's folder
    text = out.read_text()
    if role == "aggregator":
        assert site.bind == "tcp://10.0.0.5:6000" and site.certs.crl is not None and not site.data
        keys = {"name", "role", "workspace", "certs", "bind", "cert", "key", "ca", "crl"}
    else:
        assert site.aggregator == "tcp://10.0.0.5:6000" and set(site.data) == {t.name for t in plan.tasks}
        keys = set(Site.model_fields) - {"bind"} | set(CertPaths.model_fields) | set(TaskData.model_fields)
    for key in keys:  # every key the role uses is there, with its help text just above it
        assert f"{key}:" in text, key
    for model in (Site, CertPaths):
        for key, field in model.model_fields.items():
            if f"{key}:" in text:
                assert field.description in text, key
    assert yaml.safe_load(text)["name"] == name


def test_template_refuses_to_overwrite_and_bad_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "site.yaml"
    out.write_text("keep me")
    code, _, err = fltac(capsys, "site", "init", "--role", "collaborator", "--name", "s1", "--out", out)
    assert code == 2 and "already exists" in err and out.read_text() == "keep me"
    assert fltac(capsys, "site", "init", "--role", "collaborator", "--name", "s1", "--out", out, "--force")[0] == 0
    assert "my_task" in out.read_text()  # without --plan: a placeholder task to rename
    assert fltac(capsys, "site", "init", "--role", "admin", "--name", "s1", "--out", out, "--force")[0] == 2
    assert fltac(capsys, "site", "init", "--role", "collaborator", "--name", "no spaces", "--out", out, "--force")[0] == 2
