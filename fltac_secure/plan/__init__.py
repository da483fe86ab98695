"""Federation plan (hashed contract) and site file (local settings)."""

from fltac_secure.plan.load import (
    DEMO_PLAN, canonical_json, hello_sections, load_plan, load_site, plan_hash, section_hashes,
)  # fmt: skip
from fltac_secure.plan.schema import Plan, Task
from fltac_secure.plan.site import Site

__all__ = [
    "DEMO_PLAN", "Plan", "Site", "Task", "canonical_json", "hello_sections", "load_plan", "load_site", "plan_hash",
    "section_hashes",
]  # fmt: skip
