"""The site file: one site's local settings (paths, addresses). Not hashed.

One plan serves every site; everything that differs between sites lives here.
Relative paths are resolved against the site file's folder when loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fltac_secure.plan.schema import NAME_RE, Strict


class CertPaths(Strict):
    cert: Path = Field(description="This site's certificate (PEM).")
    key: Path = Field(description="This site's private key (PEM, mode 0600).")
    ca: Path = Field(description="The federation CA certificate (PEM).")
    crl: Path | None = Field(default=None, description="The CA's revocation list (PEM); required on the aggregator.")


class TaskData(Strict):
    train: Path = Field(description="CSV or JSONL file of training examples.")
    test: Path | None = Field(default=None, description="Optional held-out test file in the same format.")
    text_column: str = Field(default="text", min_length=1, description="Column holding the input text.")
    label_column: str = Field(default="label", min_length=1, description="Column holding the label name.")


class Site(Strict):
    name: str = Field(pattern=NAME_RE, description="This site's name (its certificate CN).")
    role: Literal["aggregator", "collaborator"] = Field(description="Which role this site runs.")
    workspace: Path = Field(description="Folder for state, ledger and outputs of this site.")
    certs: CertPaths = Field(description="Certificate, key, CA and CRL paths.")
    data: dict[str, TaskData] = Field(
        default_factory=dict, description="Collaborators: training data per local task (task name -> files)."
    )
    aggregator: str | None = Field(
        default=None, description="Collaborators: the aggregator endpoint to connect to, e.g. tcp://127.0.0.1:5555."
    )
    bind: str | None = Field(
        default=None, description="Aggregator: the endpoint to bind, e.g. tcp://127.0.0.1:5555."
    )
    server_name: str = Field(
        default="localhost", description="Collaborators: the name the aggregator's certificate must carry (SAN)."
    )

    @model_validator(mode="after")
    def _role_fields(self) -> "Site":
        if self.role == "collaborator":
            if not self.aggregator:
                raise ValueError("role collaborator needs 'aggregator' (e.g. tcp://127.0.0.1:5555)")
            if not self.data:
                raise ValueError("role collaborator needs 'data' with at least one task")
            if self.bind:
                raise ValueError("'bind' is for the aggregator; a collaborator uses 'aggregator'")
        else:
            if not self.bind:
                raise ValueError("role aggregator needs 'bind' (e.g. tcp://127.0.0.1:5555)")
            if self.data:
                raise ValueError("the aggregator holds no data; remove 'data'")
        for ep in (self.aggregator, self.bind):
            if ep is not None and not ep.startswith(("tcp://", "ipc://")):
                raise ValueError(f"endpoint {ep!r} must start with tcp:// or ipc://")
        return self

    def resolved(self, base: Path) -> "Site":
        """A copy with every relative path made absolute against ``base``."""

        def fix(p: Path | None) -> Path | None:
            return None if p is None else (p if p.is_absolute() else (base / p).resolve())

        certs = self.certs.model_copy(
            update={k: fix(getattr(self.certs, k)) for k in ("cert", "key", "ca", "crl")}
        )
        data = {
            t: d.model_copy(update={"train": fix(d.train), "test": fix(d.test)}) for t, d in self.data.items()
        }
        return self.model_copy(update={"workspace": fix(self.workspace), "certs": certs, "data": data})
