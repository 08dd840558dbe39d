"""The stage tasks of the worked example in docs/pipelines.md.

Run a daemon that loads them (from the top of the repository)::

    PYTHONPATH=docs/pipeline_example pyrexisd --tasks example_pipeline

then ``pyrexisctl pipeline run docs/pipeline_example/words.toml --wait``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from pyrexisd.tasks import task


@task(name="example.clean", mode="process", modes=["process", "thread"])
def clean(quote: dict[str, Any]) -> dict[str, Any] | None:
    """Lower-case a quote's text, keep letters and spaces; None (dropped) when nothing is left."""
    text = "".join(ch if ch.isalpha() else " " for ch in str(quote.get("text", "")).lower())
    return {"id": quote["id"], "text": text} if text.strip() else None


@task(name="example.words")
def words(quote: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One value per word of a quote (a generator: fan-out)."""
    for word in quote["text"].split():
        yield {"id": quote["id"], "word": word}


@task(name="example.score")
async def score(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A batch at a time, as a call to a model or a bulk API would be: one value per item."""
    await asyncio.sleep(0.01)  # the round trip a real service would cost
    return [{**item, "score": len(set(item["word"])) / len(item["word"])} for item in batch]
