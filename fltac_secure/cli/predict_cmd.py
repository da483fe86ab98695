"""`fltac predict`: try an exported adapter on a few texts (loads torch only when run)."""

from __future__ import annotations

from pathlib import Path

import typer

from fltac_secure.cli.common import console, print_json

PREDICT_HELP = (
    "Classify texts with an exported adapter folder (a site's out/<task>/, the aggregator's out/cluster_<c>/ "
    "or simulate's adapters/<task>/): the base model with the LoRA adapter, mean pooling, the head, the task's "
    "logits. In Python: fltac_secure.load_adapter(DIR).predict(texts)."
)


def predict_cmd(
    adapter: Path = typer.Option(..., "--adapter", help="Exported adapter folder (holds fltac.json).",
                                 show_default=False),
    text: list[str] = typer.Option(..., "--text", help="A text to classify; repeat for several.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: label and probabilities per text."),
) -> None:
    """Classify texts with an exported adapter (see PREDICT_HELP)."""
    from fltac_secure.learning.classifier import load_adapter  # torch, transformers, peft: only here

    clf = load_adapter(adapter)
    proba = clf.predict_proba(text)
    rows = [{"text": t, "label": clf.labels[int(p.argmax())],
             "probabilities": {lab: round(float(x), 4) for lab, x in zip(clf.labels, p, strict=True)}}
            for t, p in zip(text, proba, strict=True)]
    if as_json:
        print_json({"adapter": str(adapter), "task": clf.task, "labels": clf.labels, "predictions": rows})
        return
    console.print(f"adapter {adapter} (task {clf.task or 'unknown: see fltac.json how_to_map'}, "
                  f"labels {', '.join(clf.labels)})", soft_wrap=True, highlight=False)
    for row in rows:
        console.print(f"{row['label']}\t{row['probabilities'][row['label']]:.3f}\t{row['text']}",
                      soft_wrap=True, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add `predict` to the main app."""
    app.command("predict", help=PREDICT_HELP)(predict_cmd)
