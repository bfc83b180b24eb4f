"""Each kind of DomainError answers with its status, in the API's one error shape."""

import pytest

from core.api import api_exception_handler
from core.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound, Unprocessable


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (InvalidInput, 400),
        (Forbidden, 403),
        (NotFound, 404),
        (Conflict, 409),
        (Unprocessable, 422),
    ],
)
def test_each_kind_of_refusal_has_its_status(kind, status):
    response = api_exception_handler(kind(code="some_code", message="Some message."), {})

    assert response.status_code == status
    assert response.data == {"error": {"code": "some_code", "message": "Some message."}}


def test_a_refusal_about_a_field_names_it():
    error = NotFound(code="team_not_found", message="Team not found.", field="teamId")

    response = api_exception_handler(error, {})

    assert response.status_code == 404
    assert response.data == {
        "error": {
            "code": "team_not_found",
            "message": "Team not found.",
            "fields": {"teamId": ["Team not found."]},
        }
    }


def test_a_narrower_kind_answers_with_the_status_of_the_kind_it_refines():
    class LeadClosed(Conflict):
        pass

    assert api_exception_handler(LeadClosed(code="c", message="m"), {}).status_code == 409
    assert api_exception_handler(DomainError(code="c", message="m"), {}).status_code == 400
