"""Regenerate ``openai_components.json`` from OpenAI's published OpenAPI spec.

Not a test and not imported by tests; run by hand when refreshing the vendored
schemas (see README.md in this directory). Needs PyYAML only for a ``.yaml``
input; ``openapi.json`` from the same commit works with the standard library.

    python extract_openai_schemas.py SPEC_FILE --commit SHA --date ISO8601 \
        [--path openapi.yaml] > openai_components.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REPOSITORY = "openai/openai-openapi"
ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
]
PREFIX = "#/components/schemas/"


def _refs(node: object):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--date", required=True, help="commit date, ISO 8601")
    parser.add_argument("--path", default="openapi.yaml", help="path of SPEC in the repository")
    args = parser.parse_args()

    raw = args.spec.read_bytes()
    if args.spec.suffix in (".yaml", ".yml"):
        import yaml  # only needed for the YAML form

        spec = yaml.safe_load(raw)
    else:
        spec = json.loads(raw)
    schemas = spec["components"]["schemas"]

    reached: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for ref in _refs(schemas[name]):
            if not ref.startswith(PREFIX):
                raise SystemExit(f"{name}: unsupported $ref {ref!r}")
            todo.append(ref[len(PREFIX) :])

    out = {
        "source": {
            "repository": REPOSITORY,
            "url": f"https://github.com/{REPOSITORY}",
            "path": args.path,
            "commit": args.commit,
            "commit_date": args.date,
            "raw_url": f"https://raw.githubusercontent.com/{REPOSITORY}/{args.commit}/{args.path}",
            "file_sha256": hashlib.sha256(raw).hexdigest(),
            "openapi": spec["openapi"],
            "info_version": spec["info"]["version"],
            "roots": ROOTS,
            "note": (
                "components.schemas holds the roots and every schema they reach through "
                "$ref, copied unmodified from the spec; OpenAPI-specific keywords "
                "(nullable, discriminator, x-*) are converted at load time by "
                "tests/openai_schema.py"
            ),
        },
        "components": {"schemas": {name: schemas[name] for name in sorted(reached)}},
    }
    json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
