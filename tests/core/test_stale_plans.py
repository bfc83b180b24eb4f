"""A prepared statement that a migration made stale (a column's type changed) costs one
failed request per connection, not every request while the connection lives."""

import psycopg
import pytest
from django.db import NotSupportedError, close_old_connections, connection

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SELECT = "SELECT id, label FROM stale_plan_probe WHERE id = %s"


@pytest.fixture
def probe_table():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE stale_plan_probe (id int PRIMARY KEY, label varchar(10))")
        cursor.execute("INSERT INTO stale_plan_probe VALUES (1, 'one')")
    yield
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS stale_plan_probe")


def run_select():
    with connection.cursor() as cursor:
        cursor.execute(SELECT, [1])
        return cursor.fetchone()


def migrate_elsewhere():
    """What `migrate` does to a column whose max_length grew, from another process."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as other:
        other.execute("ALTER TABLE stale_plan_probe ALTER COLUMN label TYPE varchar(20)")


def test_a_connection_with_a_stale_plan_is_replaced_at_the_end_of_the_request(probe_table):
    connection.close()
    for _ in range(8):  # psycopg prepares it on the 5th run
        assert run_select() == (1, "one")
    migrate_elsewhere()

    with pytest.raises(NotSupportedError):
        run_select()  # this request fails: the statement was planned for varchar(10)

    close_old_connections()  # the end of the request (or task)
    assert run_select() == (1, "one"), "the next request runs on a fresh connection"
