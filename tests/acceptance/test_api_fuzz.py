"""schemathesis against the published OpenAPI document, every endpoint, with a valid token of
a user holding every privilege: no 5xx, every response as the document says (status, media
type, schema). A bounded number of examples per endpoint keeps it within the suite's budget."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from bulkmail import db, mailboxes, tokens
from tests import servers, webserver

EXAMPLES = 15


@pytest.fixture(scope="module")
def served(
    postgres: servers.Postgres, pg_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[webserver.Web, str]]:
    with postgres.database("bulkmail_fuzz", template=pg_template) as name:
        url = postgres.url(name)
        engine = db.make_engine(url)
        with db.session_scope(engine) as session:
            mailboxes.add_user(
                session,
                name="Fuzz",
                email="fuzz@example.org",
                privileges=list(mailboxes.PRIVILEGES),
            )
            _, secret = tokens.create(session, user="fuzz@example.org", name="fuzz")
        engine.dispose()
        with webserver.started(url, tmp_path_factory.mktemp("fuzz")) as start:
            # With the dashboard's token set, nothing answers without a credential.
            yield start(BULKMAIL_WEB_TOKEN="fuzz-dashboard-token"), secret


def test_every_endpoint_answers_as_documented(served: tuple[webserver.Web, str]) -> None:
    web, secret = served
    auth = {"Authorization": f"Bearer {secret}"}
    schema = schemathesis.openapi.from_url(web.url + "/api/v1/openapi.json", headers=auth)
    schema.config.update(base_url=web.url)
    failures: list[str] = []
    operations = 0
    for found in schema.get_all_operations():
        operation = found.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            # A request the schema allows may still be refused (422) by the domain's own rules:
            # addresses, template syntax, the recipient query language are more than a schema.
            case.call_and_validate(headers=auth, excluded_checks=[checks.positive_data_acceptance])

        try:
            fuzz()
        except (Exception, BaseExceptionGroup) as error:  # every endpoint's failure is reported
            failures.append(f"{operation.label}: {error}")
    assert operations >= 30
    assert not failures, "\n\n".join(failures)
