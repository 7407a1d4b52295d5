"""``GET /openapi.json``: a valid OpenAPI 3 document of every route, from the schemas."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from jsonschema import ValidationError
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from bridge import Bridge
from bridge import openapi as openapi_module
from bridge.schemas import ErrorSchema, RegistrationSchema, TokenQuerySchema, TokenSchema
from tests.conftest import TOKENS_URL

ERROR_CODES = {"400", "401", "404", "409", "410", "413", "415", "422", "503"}


@pytest.fixture
def spec(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def conforms(spec, schema_ref: str, instance) -> None:
    """Validate ``instance`` against a schema of the document (refs resolved in it)."""
    OAS31Validator({"$ref": schema_ref, "components": spec["components"]}).validate(instance)


def blueprint_routes(app, prefix: str = ""):
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("bridge."):
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            assert path.startswith(prefix)
            yield path[len(prefix) :] or "/", sorted(rule.methods - {"HEAD", "OPTIONS"})


def test_the_document_is_valid_openapi(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "reteno-telegram-bridge"


def test_every_route_of_the_blueprint_is_documented(app, spec):
    routes = list(blueprint_routes(app))
    assert {
        "/register",
        "/tokens",
        "/tokens/{token}/history",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/statuses",
        "/telegram/webhook",
    } <= {p for p, _ in routes}
    for path, methods in routes:
        assert path in spec["paths"], path
        for method in methods:
            assert method.lower() in spec["paths"][path], (method, path)


def test_auth_is_documented_per_endpoint(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["webhookBasic"]["scheme"] == "basic"
    assert schemes["telegramSecret"]["in"] == "header"
    assert schemes["telegramSecret"]["name"] == "X-Telegram-Bot-Api-Secret-Token"
    paths = spec["paths"]
    for path in ("/register", "/tokens", "/tokens/{token}/history"):
        op = next(iter(paths[path].values()))
        assert op["security"] == [{"bearer": []}], path
        assert op["responses"]["401"] == {"$ref": "#/components/responses/UNAUTHORIZED"}
    assert paths["/statuses"]["post"]["security"] == [{"webhookBasic": []}, {"bearer": []}]
    assert paths["/statuses"]["get"]["security"] == []
    assert paths["/telegram/webhook"]["post"]["security"] == [
        {"telegramSecret": []},
        {"bearer": []},
    ]
    assert paths["/healthz"]["get"]["security"] == [{}, {"bearer": []}]  # details with a key
    assert paths["/metrics"]["get"]["security"] == [{"bearer": []}]
    assert paths["/openapi.json"]["get"]["security"] == []


def test_every_error_response_is_the_error_shape(spec):
    responses = spec["components"]["responses"]
    for ref in responses.values():
        assert ref["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    seen = set()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if method == "parameters":  # the path's own (``{token}``)
                continue
            assert any(code[0] == "2" for code in op["responses"]), (method, path)
            for code, response in op["responses"].items():
                if code[0] in "45":
                    seen.add(code)
                    name = response["$ref"].rsplit("/", 1)[1]
                    assert name in responses, (code, path)
    assert seen == ERROR_CODES
    error = spec["components"]["schemas"]["Error"]
    assert (
        set(error["properties"])
        == set(ErrorSchema().fields)
        == {"code", "status", "message", "errors"}
    )


def test_the_schemas_are_those_the_views_use(spec):
    schemas = spec["components"]["schemas"]
    assert set(schemas["Token"]["properties"]) == set(TokenSchema().fields)
    assert schemas["Token"]["required"] == ["token"]
    assert set(schemas["Registration"]["properties"]) == set(RegistrationSchema().fields)
    parameters = spec["paths"]["/tokens"]["get"]["parameters"]
    assert {p["name"] for p in parameters} == set(TokenQuerySchema().fields)
    limit = next(p for p in parameters if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "default": 50, "minimum": 1, "maximum": 500}
    body = spec["paths"]["/register"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {
        "oneOf": [{"$ref": "#/components/schemas/Token"}, {"$ref": "#/components/schemas/Batch"}]
    }
    result = spec["paths"]["/statuses"]["post"]["responses"]["200"]
    assert set(schemas["StatusResult"]["properties"]) == {
        "processed",
        "removed",
        "unmatched",
        "ignored",
        "stale",
        "ambiguous",
    }
    assert result["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StatusResult"
    }


def test_real_answers_conform_to_the_document(client, auth, spec, requests_mock, bridge):
    registered = client.post(
        "/register",
        headers=auth,
        json={
            "tokens": [
                {"token": 123456789, "email": "ann@example.com", "phone": "+380 95 649 09 55"}
            ]
        },
    )
    conforms(spec, "#/components/schemas/RegisterResponse", registered.get_json())
    requests_mock.post(TOKENS_URL, json="OK")
    bridge.deliver_once()
    conforms(spec, "#/components/schemas/TokenPage", client.get("/tokens", headers=auth).get_json())
    conforms(
        spec,
        "#/components/schemas/History",
        client.get("/tokens/123456789/history", headers=auth).get_json(),
    )
    conforms(
        spec,
        "#/components/schemas/StatusResult",
        client.post(
            "/statuses", headers=auth, json={"status": "SENT", "token": "123456789"}
        ).get_json(),
    )
    conforms(spec, "#/components/schemas/StatusProbe", client.get("/statuses").get_json())
    conforms(spec, "#/components/schemas/Health", client.get("/healthz").get_json())
    conforms(spec, "#/components/schemas/Health", client.get("/healthz", headers=auth).get_json())
    for response, code in (
        (client.post("/register", headers=auth, json={"token": "x"}), 422),
        (client.post("/register", headers=auth, data="{", content_type="application/json"), 400),
        (client.post("/register", headers=auth, data="a", content_type="text/plain"), 415),
        (client.get("/tokens"), 401),
        (client.get("/tokens", headers=auth, query_string={"cursor": "nope"}), 422),
    ):
        assert response.status_code == code, (response.status_code, response.get_json())
        conforms(spec, "#/components/schemas/Error", response.get_json())


def test_server_url_is_where_the_bridge_is_mounted(config, tmp_path):
    app = Flask("host", instance_path=str(tmp_path / "host"))
    app.config.from_mapping(config)
    Bridge(app, url_prefix="/reteno")
    try:
        spec = (
            app.test_client()
            .get("/reteno/openapi.json", base_url="https://bots.example.org")
            .get_json()
        )
        assert spec["servers"] == [{"url": "/reteno"}]
        spec = (
            app.test_client()
            .get("/reteno/openapi.json", base_url="https://bots.example.org/api")
            .get_json()
        )
        assert spec["servers"] == [{"url": "/api/reteno"}]  # under a WSGI mount (SCRIPT_NAME)
        for path, methods in blueprint_routes(app, prefix="/reteno"):
            for method in methods:
                assert method.lower() in spec["paths"][path]
    finally:
        app.extensions["reteno_bridge"].db.dispose()


def test_server_url_at_the_root(client):
    spec = client.get("/openapi.json", base_url="http://localhost:5000").get_json()
    assert spec["servers"] == [{"url": "/"}]


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "attacker.example"},
        {"Host": "attacker.example", "X-Forwarded-Host": "x.example", "X-Forwarded-Proto": "https"},
    ],
)
def test_a_forged_host_never_reaches_the_document(client, headers):
    """The server URL is relative: a forged Host cannot point clients that read the
    document (code generators, Swagger UI) at another site."""
    response = client.get("/openapi.json", headers=headers)
    assert response.status_code == 200
    assert "attacker.example" not in response.get_data(as_text=True)
    assert "x.example" not in response.get_data(as_text=True)
    assert response.get_json()["servers"] == [{"url": "/"}]


def test_the_document_is_built_once_per_runtime(client, bridge, monkeypatch):
    built = []
    real = openapi_module.build

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(openapi_module, "build", counting)
    monkeypatch.setattr(openapi_module, "_cache", type(openapi_module._cache)())
    first = client.get("/openapi.json", base_url="http://a.example").get_json()
    second = client.get("/openapi.json", base_url="http://b.example/api").get_json()
    assert len(built) == 1
    assert first["servers"] != second["servers"]
    assert {**first, "servers": None} == {**second, "servers": None}


@pytest.mark.parametrize(
    "field, values",
    [
        (
            "token",
            [
                "1",
                "-1",
                "0",
                "-0",
                "007",
                " 42 ",
                "+5",
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775808",
                "-9223372036854775809",
                "0000000000000000001",
                "00000000000000000001",
                "1" * 20,
                "12a",
                "",
            ],
        ),
        (
            "contactId",
            ["1", "0", " 17 ", "9223372036854775807", "9223372036854775808", "-3", "0009"],
        ),
        (
            "phone",
            [
                "+380 (95) 649-09-55",
                "1234567",
                "123456",
                "1" * 15,
                "1" * 16,
                "1+234567",
                " +1234567 ",
                "+ 1234567",
            ],
        ),
        (
            "email",
            [
                "ann@example.com",
                " Ann@Example.COM ",
                "a" * 64 + "@b.co",
                "a" * 65 + "@b.co",
                "a@b",
                "a@-b.co",
            ],
        ),
        (
            "externalCustomerId",
            ["a", " a ", "a b", "a\tb", "\u200ba", " ", "\x00", "a\u00a0b", "\U000e0001x"],
        ),
    ],
)
def test_the_document_states_each_identifier_rule_exactly(spec, client, auth, field, values):
    """A string the document's pattern allows is one /register takes, and the other way
    round (schemathesis sends both kinds)."""
    pattern = re.compile(spec["components"]["schemas"]["Token"]["properties"][field]["pattern"])
    for value in values:
        body = {"token": value} if field == "token" else {"token": 5, field: value}
        if field == "token":
            body["email"] = "ann@example.com"
        taken = client.post("/register", headers=auth, json=body).status_code == 202
        assert bool(pattern.search(value)) == taken, (field, value)


def test_the_document_says_an_identifier_is_required(spec):
    conforms(spec, "#/components/schemas/Token", {"token": 5, "email": "a@b.co"})
    for instance in ({"token": 5}, {"token": 5, "email": None}):
        with pytest.raises(ValidationError):
            conforms(spec, "#/components/schemas/Token", instance)


def test_the_bridge_leaves_the_host_apps_own_handlers_and_commands_alone(config, tmp_path):
    app = Flask("host", instance_path=str(tmp_path / "host"))
    app.config.from_mapping(config)

    @app.get("/hello")
    def hello():
        return "hi"

    Bridge(app, url_prefix="/reteno")
    try:
        client = app.test_client()
        assert client.get("/reteno/openapi.json").status_code == 200
        assert app.error_handler_spec[None] == {}  # the bridge's handlers are its blueprint's
        assert "openapi" not in app.cli.commands
        assert "flask-smorest" not in app.extensions
        missing = client.get("/nowhere")
        assert missing.status_code == 404 and not missing.is_json  # Flask's own page
    finally:
        app.extensions["reteno_bridge"].db.dispose()


def test_the_links_are_documented_and_answer_as_documented(make_app, auth):
    app = make_app(TELEGRAM_BOT_USERNAME="my_shop_bot")
    client = app.test_client()
    spec = client.get("/openapi.json").get_json()
    paths = spec["paths"]
    assert set(paths["/links"]["post"]["responses"]) >= {"201", "401", "409", "422"}
    assert set(paths["/links/{link_id}"]) - {"parameters"} == {"get", "delete"}
    assert "204" in paths["/links/{link_id}"]["delete"]["responses"]
    svg = paths["/links/{link_id}/qr.svg"]["get"]["responses"]["200"]["content"]
    assert "image/svg+xml" in svg
    assert "image/png" in paths["/links/{link_id}/qr.png"]["get"]["responses"]["200"]["content"]
    claimed = paths["/links/claims/{code}"]["post"]["responses"]
    assert set(claimed) >= {"202", "404", "409", "410", "422"}
    conforms(spec, "#/components/schemas/LinkRequest", {"email": "a@b.co", "ttl": "12h"})
    with pytest.raises(ValidationError):
        conforms(spec, "#/components/schemas/LinkRequest", {"ttl": 60})

    made = client.post("/links", json={"contactId": 5, "ttl": 60}, headers=auth).get_json()
    conforms(spec, "#/components/schemas/LinkCreated", made)
    shown = client.get(f"/links/{made['id']}", headers=auth).get_json()
    conforms(spec, "#/components/schemas/LinkStatus", shown)
    code = client.post("/links/claims", json={"token": 5}, headers=auth).get_json()
    conforms(spec, "#/components/schemas/ClaimCode", code)
    claimed = client.post(f"/links/claims/{code['code']}", json={"contactId": 5}, headers=auth)
    conforms(spec, "#/components/schemas/RegisterResponse", claimed.get_json())
