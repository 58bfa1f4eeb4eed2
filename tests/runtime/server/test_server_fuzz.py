"""Schema fuzzing: schemathesis generates requests from the server's own OpenAPI document (valid
ones, and invalid ones for the operation that takes a body) and checks every response against
it. The server must never answer 5xx and must answer what it documents. Bounded: a fixed number
of derandomized examples per operation and mode."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from autoglm_export.source import open_source
from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.server import BackgroundServer, ServerConfig, create_app

EXAMPLES = 60  # per operation and mode
KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    # a 96-token context bounds every generation the fuzzer can ask for
    src = open_source(preset="tiny", max_context=96)
    config = ServerConfig(request_timeout=30, api_key=KEY)
    app = create_app(TorchBackend(src.model), src.tokenizer_path, src.spec, config)
    with BackgroundServer(app) as url:
        yield url, app


def fuzz(url: str, op, mode: GenerationMode) -> set[int]:
    statuses: set[int] = set()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call(base_url=url, headers=AUTH, timeout=60)
        statuses.add(response.status_code)
        assert response.status_code < 500, (case.body, response.text)
        # every check but "schema-valid data is accepted": a valid-looking request may
        # still get a documented 400 (a prompt over the context, an undecodable image)
        case.validate_response(response, headers=AUTH, excluded_checks=[positive_data_acceptance])

    check()
    return statuses


def test_fuzz_every_operation(server):
    url, app = server
    schema = schemathesis.openapi.from_dict(app.openapi())
    operations = {r.ok().label: r.ok() for r in schema.get_all_operations()}
    chat = "POST /v1/chat/completions"
    assert {chat, "GET /v1/models", "GET /health"} <= set(operations)
    statuses = {label: fuzz(url, op, GenerationMode.POSITIVE) for label, op in operations.items()}
    invalid = fuzz(url, operations[chat], GenerationMode.NEGATIVE)
    print(statuses, invalid)
    assert {200, 400} <= statuses[chat] and 400 in invalid and max(invalid) < 500


@pytest.mark.parametrize("field, value", [("presence_penalty", False), ("temperature", "1"), ("max_tokens", True)])
def test_sampling_numbers_are_not_coerced(field, value):
    """Found by the fuzzer: lax parsing took `presence_penalty: false` as 0.0 and answered 200."""
    from pydantic import ValidationError

    from autoglm_runtime.server.schemas import ChatCompletionRequest

    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], field: value})
