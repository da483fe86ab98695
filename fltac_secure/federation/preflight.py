"""Everything a site file points at, checked before a run: `fltac plan validate PLAN --site SITE`.

The plan and the site file themselves are validated when loaded; this reads
what they point at - certificates, key, CA and CRL, and a collaborator's data
files - and returns one line per problem, each naming the site-file key.
"""

from __future__ import annotations

from fltac_secure.data.site_check import data_problems
from fltac_secure.errors import ConfigError
from fltac_secure.pki.site_check import certificate_problems
from fltac_secure.plan import Plan, Site


def site_problems(site: Site, plan: Plan) -> list[str]:
    """All problems with what ``site`` points at (empty: ready to start)."""
    problems = []
    if site.workspace.exists() and not site.workspace.is_dir():
        problems.append(f"workspace: {site.workspace} is a file; give a folder (it is created if missing)")
    problems += certificate_problems(site)
    if site.role == "collaborator":
        problems += data_problems(site, plan)
    return problems


def check_site(site: Site, plan: Plan, path: object) -> None:
    """ConfigError (exit 2) listing every problem of the site file at ``path``; returns if there is none."""
    problems = site_problems(site, plan)
    if problems:
        raise ConfigError(f"site file {path} for {site.role} {site.name!r} has {len(problems)} problem(s):", problems)
