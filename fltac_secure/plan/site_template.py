"""A commented site-file template for a role (`fltac site init`).

The comments are the fields' own help texts (``Field(description=...)`` in
``site.py``), so the template and the schema cannot drift apart.  The result
loads as it is (``load_site``); only paths and addresses need filling in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from fltac_secure.plan.site import CertPaths, Site, TaskData

if TYPE_CHECKING:
    from fltac_secure.plan.schema import Plan

Role = Literal["aggregator", "collaborator"]
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


def _help(model: type[BaseModel], key: str) -> str:
    return model.model_fields[key].description or ""


def _pair(indent: str, key: str, value: str, model: type[BaseModel], *, commented: bool = False) -> list[str]:
    mark = "# " if commented else ""
    return [f"{indent}# {_help(model, key)}", f"{indent}{mark}{key}: {value}"]


def site_template(role: Role, name: str, plan: Plan | None = None, endpoint: str = DEFAULT_ENDPOINT) -> str:
    """The YAML text of a commented site file for ``name`` in ``role`` (tasks from ``plan`` if given)."""
    lines = [
        f"# Site file of {name!r} ({role}): this site's local settings. Not hashed: every site runs the same",
        "# plan with its own site file. Relative paths are resolved against the folder of this file.",
        "# Check it, and everything it points at, with:  fltac plan validate PLAN --site THIS_FILE",
        "",
        *_pair("", "name", name, Site),
        *_pair("", "role", role, Site),
        *_pair("", "workspace", "workspace", Site),
        f"# {_help(Site, 'certs')}",
        "certs:",
        *_pair("  ", "cert", f"certs/{name}.crt", CertPaths),
        *_pair("  ", "key", f"certs/{name}.key", CertPaths),
        *_pair("  ", "ca", "certs/ca.crt", CertPaths),
        *_pair("  ", "crl", "certs/crl.pem", CertPaths, commented=role == "collaborator"),
    ]
    if role == "aggregator":
        lines += _pair("", "bind", endpoint, Site)
        return "\n".join(lines) + "\n"
    lines += [*_pair("", "aggregator", endpoint, Site), *_pair("", "server_name", "localhost", Site),
              f"# {_help(Site, 'data')}", "# Keep only the tasks this site holds; each file has one example per row.",
              "data:"]
    tasks = [(t.name, ", ".join(t.labels)) for t in plan.tasks] if plan else [("my_task", "the task's label names")]
    for task, labels in tasks:
        lines += [f"  {task}:  # labels: {labels}",
                  *_pair("    ", "train", f"data/{task}.train.csv", TaskData),
                  *_pair("    ", "test", f"data/{task}.test.csv", TaskData, commented=True),
                  *_pair("    ", "text_column", "text", TaskData, commented=True),
                  *_pair("    ", "label_column", "label", TaskData, commented=True)]
    return "\n".join(lines) + "\n"
