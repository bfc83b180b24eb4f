"""A service that lost a deadlock runs again; anything else is raised at once."""

import pytest
from django.db import OperationalError, transaction

from core.transactions import retry_on_deadlock


class _PgError(Exception):
    def __init__(self, sqlstate):
        self.sqlstate = sqlstate


def _error(sqlstate) -> OperationalError:
    error = OperationalError("boom")
    error.__cause__ = _PgError(sqlstate)
    return error


def _flaky(failures, sqlstate="40P01"):
    calls = []

    @retry_on_deadlock
    def service():
        calls.append(1)
        if len(calls) <= failures:
            raise _error(sqlstate)
        return "done"

    return service, calls


def test_a_deadlock_victim_is_run_again_and_succeeds():
    service, calls = _flaky(failures=2)
    assert service() == "done"
    assert len(calls) == 3


def test_it_gives_up_after_three_attempts():
    service, calls = _flaky(failures=5)
    with pytest.raises(OperationalError):
        service()
    assert len(calls) == 3


def test_other_database_errors_are_not_retried():
    service, calls = _flaky(failures=1, sqlstate="57014")  # statement timeout
    with pytest.raises(OperationalError):
        service()
    assert len(calls) == 1


@pytest.mark.django_db
def test_inside_an_outer_transaction_it_is_not_retried():
    service, calls = _flaky(failures=1)
    with pytest.raises(OperationalError), transaction.atomic():
        service()
    assert len(calls) == 1
