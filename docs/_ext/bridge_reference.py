"""Sphinx directives that generate the reference pages from the code at build time.

``reteno_bridge`` is the console script's click group, for sphinx-click;
``.. bridge-settings::`` renders :data:`bridge.config.KEYS` (name, what it takes,
default, help) as a table; ``.. bridge-http::`` builds the bridge in sandbox mode
on a temporary database, asks it for ``/openapi.json`` and renders every path.
Nothing of either is pasted into the docs: a key or a route changed in the code
changes the page at the next build.
"""

from __future__ import annotations

import json
import logging
import tempfile

from sphinx.util.docutils import SphinxDirective

from bridge.factory import command_group

METHODS = ("get", "post", "put", "patch", "delete")
# The ``reteno-bridge`` group, for sphinx-click (``.. click:: bridge_reference:reteno_bridge``).
reteno_bridge = command_group()


def _cell(text: str) -> str:
    return " ".join(str(text).split())


def settings_rst() -> str:
    from bridge.config import KEYS

    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 22 18 20 40",
        "",
        "   * - key",
        "     - takes",
        "     - default",
        "     - meaning",
    ]
    for key in KEYS:
        lines += [
            f"   * - ``{key.name}``",
            f"     - {_cell(key.read.kind)}",
            f"     - {_cell(key.default_text)}",
            f"     - {_cell(key.help)}",
        ]
    return "\n".join(lines) + "\n"


def openapi_document() -> dict:
    """The document the bridge serves, from an app that is built but never started."""
    from flask import Flask

    from bridge import Bridge

    logging.getLogger("bridge").setLevel(logging.WARNING)  # no request-log lines in the build
    with tempfile.TemporaryDirectory() as folder:
        app = Flask("bridge_docs", instance_path=folder)
        app.config.update(
            BRIDGE_SANDBOX=True,
            BRIDGE_BACKGROUND_DELIVERY=False,
            BRIDGE_DATABASE_URL=f"sqlite:///{folder}/docs.sqlite3",
        )
        Bridge().init_app(app)
        answer = app.test_client().get("/openapi.json")
        if answer.status_code != 200:
            raise RuntimeError(f"/openapi.json answered {answer.status_code}")
        return answer.get_json()


def _schema_text(schema: dict) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f":ref:`{name} <schema-{name.lower()}>`"
    for word in ("oneOf", "anyOf"):
        if word in schema:
            return " or ".join(_schema_text(s) for s in schema[word])
    if schema.get("type") == "array" and "items" in schema:
        return f"array of {_schema_text(schema['items'])}"
    kind = schema.get("type", "any")
    return "/".join(kind) if isinstance(kind, list) else str(kind)


def _body(content: dict | None) -> str:
    if not content:
        return "no body"
    return "; ".join(
        f"``{media}``: {_schema_text(v.get('schema', {}))}" for media, v in content.items()
    )


def _field_list(schema: dict) -> list[str]:
    required = set(schema.get("required", ()))
    lines = []
    for name, prop in schema.get("properties", {}).items():
        text = _schema_text(prop)
        extra = _cell(prop.get("description", ""))
        mark = " (required)" if name in required else ""
        lines.append(f"   * - ``{name}``{mark}")
        lines.append(f"     - {text}")
        lines.append(f"     - {extra}" if extra else "     -")
    return lines


def http_rst(doc: dict) -> str:
    out = [
        f"The document is OpenAPI {doc['openapi']} ({doc['info']['title']} "
        f"{doc['info']['version']}), served at ``GET /openapi.json``.",
        "",
    ]
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                out += _operation_rst(doc, method, path, item[method])
    out += ["Schemas", "-------", ""]
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        out += _schema_rst(name, schema)
    return "\n".join(out)


def _operation_rst(doc: dict, method: str, path: str, op: dict) -> list[str]:
    """One operation: its title, summary, description, authentication, parameters, body
    and answers."""
    responses = doc.get("components", {}).get("responses", {})
    schemes = doc.get("components", {}).get("securitySchemes", {})
    title = f"``{method.upper()} {path}``"
    out = [title, "-" * len(title), ""]
    if op.get("summary"):
        out += [_cell(op["summary"]) + ".", ""]
    if op.get("description"):
        out += [_cell(op["description"]), ""]
    security = op.get("security")
    if security:
        names = [", ".join(req) or "none" for req in security]
        auth = " or ".join(
            f"{name} ({_cell(schemes.get(name, {}).get('description', '')) or name})"
            if name in schemes
            else name
            for name in names
        )
        out += [f"**Authentication**: {auth}", ""]
    params = op.get("parameters", [])
    if params:
        out += ["**Parameters**:", ""]
        for p in params:
            out.append(
                f"- ``{p['name']}`` ({p['in']}, {_schema_text(p.get('schema', {}))}"
                f"{', required' if p.get('required') else ''})"
                f"{': ' + _cell(p['description']) if p.get('description') else ''}"
            )
        out.append("")
    if "requestBody" in op:
        out += [f"**Body**: {_body(op['requestBody'].get('content'))}", ""]
    out += ["**Answers**:", ""]
    for status, answer in op.get("responses", {}).items():
        if "$ref" in answer:
            answer = responses.get(answer["$ref"].rsplit("/", 1)[-1], {})
        out.append(
            f"- ``{status}``: {_cell(answer.get('description', ''))}"
            f" ({_body(answer.get('content'))})"
        )
    out.append("")
    return out


def _schema_rst(name: str, schema: dict) -> list[str]:
    out = [f".. _schema-{name.lower()}:", "", name, "~" * len(name), ""]
    if schema.get("description"):
        out += [_cell(schema["description"]), ""]
    fields = _field_list(schema)
    if fields:
        out += [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 25 20 55",
            "",
            "   * - field",
            "     - type",
            "     - meaning",
            *fields,
            "",
        ]
    else:
        out += [f"``{_cell(json.dumps(schema))}``", ""]
    return out


class SettingsDirective(SphinxDirective):
    """The configuration reference: one row per key of bridge.config.KEYS."""

    def run(self):
        self.env.note_dependency("../bridge/config.py")
        return self.parse_text_to_nodes(settings_rst())


class HttpDirective(SphinxDirective):
    """The HTTP reference: every path of the bridge's own /openapi.json."""

    def run(self):
        return self.parse_text_to_nodes(http_rst(openapi_document()), allow_section_headings=True)


def setup(app):
    app.add_directive("bridge-settings", SettingsDirective)
    app.add_directive("bridge-http", HttpDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
