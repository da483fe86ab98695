"""`fltac plan validate PLAN --site SITE`: what the site file points at is checked, each bad case
caught with one line naming the key, exit 2; a good site passes."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fltac_secure.cli import main
from fltac_secure.pki import init_ca
from fltac_secure.pki.testing import enroll_federation

PLAN = {
    "federation": "pre", "rounds": 1, "roster": ["site1", "site2"],
    "tasks": [{"name": "spam", "labels": ["ham", "spam"]}, {"name": "mood", "labels": ["neg", "pos"]}],
    "model": {"base": "tiny-bert"}, "training": {"batch_size": 16},
}
GOOD_ROWS = "text,label\n" + "".join(f"message {i},{'ham' if i % 2 else 'spam'}\n" for i in range(20))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the aggregator and site1/site2 enrolled, site1's data: the template every case copies."""
    base = tmp_path_factory.mktemp("pre")
    enroll_federation(base / "pki", ["site1", "site2"])
    init_ca(base / "other-ca")  # a CA that signed none of these
    (base / "spam.csv").write_text(GOOD_ROWS)
    (base / "mood.jsonl").write_text("".join(f'{{"text": "day {i}", "label": "{"pos" if i % 3 else "neg"}"}}\n'
                                             for i in range(12)))
    return base


def _site(root: Path, role: str = "collaborator") -> dict[str, Any]:
    pki = root / "pki"
    if role == "aggregator":
        return {"name": "aggregator", "role": "aggregator", "workspace": "ws-agg", "bind": "tcp://127.0.0.1:5555",
                "certs": {"cert": f"{pki}/aggregator/aggregator.crt", "key": f"{pki}/aggregator/aggregator.key",
                          "ca": f"{pki}/aggregator/ca.crt", "crl": f"{pki}/ca/crl.pem"}}
    return {"name": "site1", "role": "collaborator", "workspace": "ws1", "aggregator": "tcp://127.0.0.1:5555",
            "certs": {"cert": f"{pki}/site1/site1.crt", "key": f"{pki}/site1/site1.key", "ca": f"{pki}/site1/ca.crt"},
            "data": {"spam": {"train": "spam.csv"}, "mood": {"train": "mood.jsonl"}}}


def _validate(capsys: pytest.CaptureFixture[str], work: Path, site: dict[str, Any],
              plan: dict[str, Any] | None = None) -> tuple[int, str, str]:
    (work / "plan.yaml").write_text(yaml.safe_dump(plan or PLAN))
    (work / "site.yaml").write_text(yaml.safe_dump(site))
    try:
        main(["plan", "validate", str(work / "plan.yaml"), "--site", str(work / "site.yaml")])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def work(root: Path, tmp_path: Path) -> Path:
    for name in ("spam.csv", "mood.jsonl"):
        shutil.copy(root / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("role", ["collaborator", "aggregator"])
def test_a_good_site_passes(capsys: pytest.CaptureFixture[str], root: Path, work: Path, role: str) -> None:
    code, out, err = _validate(capsys, work, _site(root, role))
    assert code == 0, err
    assert "certificates and data check out" in out


def _write(name: str, content: bytes | str) -> Callable[[Path, dict], None]:
    def change(work: Path, _site: dict) -> None:
        (work / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return change


def _set(path: str, value: Any) -> Callable[[Path, dict], None]:
    def change(_work: Path, site: dict) -> None:
        node = site
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return change


def _chmod_key(work: Path, site: dict) -> None:
    key = work / "site1.key"
    shutil.copy(site["certs"]["key"], key)
    os.chmod(key, 0o644)
    site["certs"]["key"] = str(key)


PKI = "{pki}"
COLLABORATOR_CASES: dict[str, tuple[Callable[[Path, dict], None], str]] = {
    "data file missing": (_set("data.spam.train", "nowhere.csv"), "data.spam.train: data file"),
    "data file empty": (_write("spam.csv", ""), "is empty"),
    "not UTF-8": (_write("spam.csv", GOOD_ROWS.encode() + b"caf\xe9,ham\n"), "line 22: not UTF-8"),
    "text column missing": (_write("spam.csv", GOOD_ROWS.replace("text,label", "body,label")), "no column 'text'"),
    "label unknown to the plan": (_write("spam.csv", GOOD_ROWS + "hi,eggs\n"), "'eggs'"),
    "too few examples": (_write("spam.csv", "text,label\na,ham\nb,spam\n"), "has 2 example(s); a task needs at least 10"),
    "broken JSON line": (_write("mood.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label":\n'),
                         "data.mood.train: data file"),
    "test file is the train file": (_set("data.spam.test", "spam.csv"), "the same file as data.spam.train"),
    "test file unreadable": (_set("data.spam.test", "missing-test.csv"), "data.spam.test: data file"),
    "certificate missing": (_set("certs.cert", "none.crt"), "certs.cert: certificate"),
    "certificate is a YAML file": (_set("certs.cert", "site.yaml"), "is not a valid certificate: it is not PEM or DER"),
    "key of another site": (_set("certs.key", f"{PKI}/site2/site2.key"), "is not the private key of certificate"),
    "certificate of another site": (lambda w, s: (_set("certs.cert", f"{PKI}/site2/site2.crt")(w, s),
                                                  _set("certs.key", f"{PKI}/site2/site2.key")(w, s)),
                                    "is the certificate of 'site2'"),
    "certificate not from this CA": (_set("certs.ca", "{root}/other-ca/ca.crt"), "does not verify against"),
    "aggregator certificate on a site": (lambda w, s: (_set("certs.cert", f"{PKI}/aggregator/aggregator.crt")(w, s),
                                                       _set("certs.key", f"{PKI}/aggregator/aggregator.key")(w, s)),
                                         "is an aggregator certificate, this site's role is collaborator"),
    "key readable by others": (_chmod_key, "chmod 600"),
    "CA missing": (_set("certs.ca", "none-ca.crt"), "certs.ca: CA certificate"),
}


@pytest.mark.parametrize("case", list(COLLABORATOR_CASES))
def test_each_bad_collaborator_case_is_one_line(capsys: pytest.CaptureFixture[str], root: Path, work: Path,
                                                case: str) -> None:
    change, expected = COLLABORATOR_CASES[case]
    site = _site(root)
    change(work, site)
    site = yaml.safe_load(yaml.safe_dump(site).replace(PKI, str(root / "pki")).replace("{root}", str(root)))
    code, out, err = _validate(capsys, work, site)
    assert code == 2, (out, err)
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problems) >= 1 and any(expected in p for p in problems), err
    assert "Traceback" not in err and "ParseError" not in err


def test_dp_needs_delta_below_one_over_n(capsys: pytest.CaptureFixture[str], root: Path, work: Path) -> None:
    plan = copy.deepcopy(PLAN)
    plan["privacy"] = {"dp": True, "noise_multiplier": 1.0, "delta": 0.1}
    code, _, err = _validate(capsys, work, _site(root), plan)
    assert code == 2
    # mood has 12 examples: 1/n = 0.083; the DP batch is a sampling rate of the slot, so no size check
    assert "data.mood.train" in err and "privacy.delta = 0.1 is not below 1/n" in err
    assert "batch_size" not in err


def test_every_problem_is_listed_at_once(capsys: pytest.CaptureFixture[str], root: Path, work: Path) -> None:
    site = _site(root)
    site["certs"]["cert"] = "none.crt"
    site["data"]["spam"]["train"] = "nowhere.csv"
    (work / "mood.jsonl").write_text("")
    code, _, err = _validate(capsys, work, site)
    assert code == 2 and "has 3 problem(s)" in err
    assert sorted(line.split(":")[0] for line in err.splitlines() if line.startswith("  - ")) == [
        "  - certs.cert", "  - data.mood.train", "  - data.spam.train"]


AGGREGATOR_CASES: dict[str, tuple[Callable[[Path, dict], None], str]] = {
    "no CRL in the site file": (_set("certs.crl", None), "certs.crl: missing"),
    "CRL file missing": (_set("certs.crl", "none.pem"), "certs.crl: CRL"),
    "CRL of another CA": (_set("certs.crl", "{root}/other-ca/crl.pem"), "is not signed by the federation CA"),
    "CRL is not a CRL": (_set("certs.crl", "{root}/pki/ca/ca.crt"), "not a valid certificate revocation list"),
    "collaborator certificate on the aggregator": (
        lambda w, s: (_set("certs.cert", f"{PKI}/site1/site1.crt")(w, s), _set("certs.key", f"{PKI}/site1/site1.key")(w, s),
                      _set("name", "site1")(w, s)),
        "is a collaborator certificate, this site's role is aggregator"),
}


@pytest.mark.parametrize("case", list(AGGREGATOR_CASES))
def test_each_bad_aggregator_case_is_one_line(capsys: pytest.CaptureFixture[str], root: Path, work: Path,
                                              case: str) -> None:
    change, expected = AGGREGATOR_CASES[case]
    site = _site(root, "aggregator")
    change(work, site)
    site = yaml.safe_load(yaml.safe_dump(site).replace(PKI, str(root / "pki")).replace("{root}", str(root)))
    code, _, err = _validate(capsys, work, site)
    assert code == 2 and any(expected in line for line in err.splitlines() if line.startswith("  - ")), err
