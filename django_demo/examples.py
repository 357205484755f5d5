"""Send the demo's example requests to a running site and show the answers.

``python -m django_demo.examples http://127.0.0.1:8000`` prints, for each
example, the curl command that sends it and a short reading of the answer.
Exits 1 if an example that should succeed does not, so scripts/demo.sh
fails loudly on a broken setup.
"""

from __future__ import annotations

import json
import shlex
import sys
import urllib.error
import urllib.request
from typing import Any

# (path, body, the status it should get)
EXAMPLES: list[tuple[str, dict[str, Any], int]] = [
    (
        "/api/similarity",
        {
            "query": "How do I bake bread at home?",
            "texts": [
                "A simple recipe for homemade sourdough.",
                "The stock market fell sharply on Monday.",
                "Tips for kneading dough and letting it rise.",
            ],
        },
        200,
    ),
    ("/api/embed", {"texts": ["Batched inference behind Celery tasks.", "One predict call for many requests."]}, 200),
    ("/api/fill-mask", {"text": "Paris is the [MASK] of France."}, 200),
    ("/api/embed", {"texts": []}, 400),
]


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def describe(path: str, status: int, answer: dict[str, Any]) -> str:
    """A few readable lines instead of 384 floats."""
    if status != 200:
        return f"HTTP {status}: {answer.get('error')}"
    timing = f"({answer['elapsed_ms']} ms)"
    if path.endswith("similarity"):
        lines = [f"  {item['score']:.3f}  {item['text']}" for item in answer["results"]]
        return f"ranked by similarity to {answer['query']!r} {timing}\n" + "\n".join(lines)
    if path.endswith("embed"):
        first = ", ".join(f"{x:.4f}" for x in answer["embeddings"][0][:4])
        count = len(answer["embeddings"])
        return f"{count} embeddings of {answer['dim']} floats; the first starts [{first}, ...] {timing}"
    masks = [", ".join(f"{c['token']} {c['score']:.2f}" for c in candidates) for candidates in answer["masks"]]
    return f"{answer['text']} {timing}\n" + "\n".join(f"  [MASK] -> {line}" for line in masks)


def main(argv: list[str]) -> int:
    base = argv[0].rstrip("/") if argv else "http://127.0.0.1:8000"
    failed = 0
    for path, body, expected in EXAMPLES:
        print(f"$ curl -s -X POST {base}{path} -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}")
        status, answer = post(base + path, body)
        print(describe(path, status, answer), end="\n\n")
        fill_mask_off = path.endswith("fill-mask") and status == 503 and "not configured" in answer.get("error", "")
        if status != expected and not fill_mask_off:
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
