"""Loading, validating and hashing plans and site files.

Errors are ConfigError (exit code 2) with one line per problem naming the
key path, e.g. ``model.lora.rank: Input should be greater than or equal to 1 (got 0)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fltac_secure.errors import ConfigError
from fltac_secure.plan.schema import Plan
from fltac_secure.plan.site import Site

M = TypeVar("M", bound=BaseModel)

DEMO_PLAN = Path(__file__).resolve().parent.parent / "plans" / "demo.yaml"


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(err: ValidationError) -> list[str]:
    """One line per problem: ``key.path: what is expected (got value)``."""
    lines = []
    for e in err.errors():
        where = _loc(tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-"))))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling (see `fltac plan show` for the keys)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and not isinstance(e["input"], (dict, list)) and e["type"] != "value_error":
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{where}: {msg}" if where else msg)
    return lines


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line: where the parser stopped (line and column, from 1) and why, e.g.
    ``line 3, column 1: expected ',' or ']', but got '<block mapping start>' (in the list opened at line 2, column 9)``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return problem
    out = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, where = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and where is not None and (where.line, where.column) != (mark.line, mark.column):
        out += f" ({context} at line {where.line + 1}, column {where.column + 1})"
    if "'\\t'" in problem:
        out += "; YAML indents with spaces, not tabs"
    return out


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist; check the path") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} file {path} is not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must be a YAML mapping of keys to values")
    return data


def validate(model: type[M], data: dict[str, Any], what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid {what}:", format_validation_error(e)) from None


def load_plan(path: str | Path) -> Plan:
    """Read, validate and return a plan; raises ConfigError naming each bad key."""
    return validate(Plan, _read_yaml(Path(path), "plan"), f"plan {path}")


def load_site(path: str | Path, plan: Plan | None = None) -> Site:
    """Read and validate a site file; relative paths resolve against its folder.

    With ``plan``, also checks the site against it (name in roster, data tasks known).
    """
    path = Path(path)
    site = validate(Site, _read_yaml(path, "site"), f"site file {path}").resolved(path.resolve().parent)
    if plan is not None:
        check_site_against_plan(site, plan)
    return site


def check_site_against_plan(site: Site, plan: Plan) -> None:
    problems = []
    if site.role == "collaborator" and site.name not in plan.roster:
        problems.append(f"name: site {site.name!r} is not in the plan's roster {plan.roster}")
    known = {t.name for t in plan.tasks}
    for t in site.data:
        if t not in known:
            problems.append(f"data.{t}: task {t!r} is not in the plan's tasks {sorted(known)}")
    if problems:
        raise ConfigError(f"site file for {site.name!r} does not match plan {plan.federation!r}:", problems)


def canonical_json(plan: Plan) -> str:
    """Canonical serialisation: validated values with defaults, sorted keys, no whitespace."""
    return json.dumps(plan.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def plan_hash(plan: Plan) -> str:
    """SHA-256 (hex) of the canonical serialisation; independent of key order and comments."""
    return hashlib.sha256(canonical_json(plan).encode("ascii")).hexdigest()


def section_hashes(plan: Plan) -> dict[str, str]:
    """A short SHA-256 per top-level plan section, so two sites whose plan hashes differ
    can name the sections that differ without sending the plan itself (``hello_sections``)."""
    dump = plan.model_dump(mode="json")
    return {
        key: hashlib.sha256(json.dumps(dump[key], sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
        for key in sorted(dump)
    }


def hello_sections(plan: Plan) -> list[str]:
    """``section_hashes`` as the "section=hash" strings a site sends in its HELLO."""
    return [f"{k}={v}" for k, v in section_hashes(plan).items()]
