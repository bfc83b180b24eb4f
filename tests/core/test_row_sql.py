"""core.row_sql: one row's INSERT/UPDATE text built once per shape, the row it writes the
same as Django's own save would write."""

import uuid
import warnings
from datetime import UTC, datetime, tzinfo
from types import SimpleNamespace

import pytest
from django.db import connection, models
from django.db.models import Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Lower
from django.test.utils import isolate_apps
from psycopg.types.json import Jsonb

from audit.models import ActivityLog
from core import row_sql
from inbox.models import Channel, SessionNotice
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db


def run(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def activity(tenant, **fields):
    defaults = {"action": "test.done", "actor_label": "system", "via": "test", "data": {"n": 1}}
    return ActivityLog(tenant=tenant, target_label="x", **(defaults | fields))


def test_an_inserted_row_reads_back_as_the_instance_said_with_defaults_and_auto_now():
    tenant = TenantFactory()
    row = activity(tenant, data={"nested": {"list": [1, "two"]}, "none": None})
    run(*row_sql.insert_sql(row))
    saved = ActivityLog.objects.for_tenant(tenant).get(pk=row.pk)
    assert saved.created_at is not None and saved.created_at == row.created_at  # auto_now_add
    assert saved.data == {"nested": {"list": [1, "two"]}, "none": None}  # JSON, not text
    assert (saved.action, saved.actor_id, saved.target_label) == ("test.done", None, "x")


def test_the_text_of_a_shape_is_built_once_and_only_the_parameters_change():
    tenant = TenantFactory()
    first_sql, first_params = row_sql.insert_sql(activity(tenant, action="a"))
    second_sql, second_params = row_sql.insert_sql(activity(tenant, action="b"))
    assert first_sql is second_sql
    assert "a" in first_params and "b" in second_params


def test_when_false_inserts_nothing_and_when_true_inserts_the_row():
    tenant = TenantFactory()
    skipped, kept = activity(tenant, action="skipped"), activity(tenant, action="kept")
    assert run(*row_sql.insert_sql(skipped, when="1 = 0")) == 0
    assert run(*row_sql.insert_sql(kept, when="1 = 1")) == 1
    assert list(ActivityLog.objects.for_tenant(tenant).values_list("action", flat=True)) == ["kept"]


def test_a_raw_sql_value_is_spliced_in_with_its_own_parameters():
    tenant = TenantFactory()
    row = activity(tenant)
    row.target_label = RawSQL("SELECT %s || '-' || %s", ["left", "right"])
    run(*row_sql.insert_sql(row))
    assert ActivityLog.objects.for_tenant(tenant).get(pk=row.pk).target_label == "left-right"


def test_ignore_conflicts_skips_a_row_whose_key_is_taken():
    tenant = TenantFactory()
    row = activity(tenant, action="first")
    run(*row_sql.insert_sql(row))
    again = activity(tenant, action="second")
    again.pk = row.pk
    assert run(*row_sql.insert_sql(again, ignore_conflicts=True)) == 0
    assert ActivityLog.objects.for_tenant(tenant).get(pk=row.pk).action == "first"


def test_other_expressions_go_through_djangos_compiler():
    tenant = TenantFactory()
    row = activity(tenant, action="old")
    row.target_label = Lower(Value("LEFT"))
    assert run(*row_sql.insert_sql(row)) == 1
    assert ActivityLog.objects.for_tenant(tenant).get(pk=row.pk).target_label == "left"


@pytest.mark.postgres
def test_a_null_is_written_into_the_text_and_reads_back_as_null():
    tenant = TenantFactory()
    row = activity(tenant, actor_user_id=None)
    sql, params = row_sql.insert_sql(row, when="1 = 1")  # INSERT … SELECT: NULLs typed
    assert "NULL::uuid" in sql and None not in params
    assert run(sql, params) == 1
    saved = ActivityLog.objects.for_tenant(tenant).get(pk=row.pk)
    assert (saved.actor_id, saved.actor_user_id) == (None, None)


def notice(tenant, **fields):
    recipient = MembershipFactory(tenant=tenant)
    defaults = {"kind": "session_assigned", "title": "New conversation", "body": ""}
    return SessionNotice(tenant=tenant, recipient=recipient, **(defaults | fields))


@pytest.mark.postgres
def test_literals_write_values_equal_to_their_fields_constant_default_into_the_text():
    tenant = TenantFactory()
    row = notice(tenant, kind="session_assigned", is_read=False, body="", dedupe_key="")
    sql, params = row_sql.insert_sql(row, literals=True)
    # is_read, body and dedupe_key hold their defaults; kind and title do not.
    assert "false" in sql and False not in params and "" not in params
    assert "session_assigned" in params and "New conversation" in params
    assert run(sql, params) == 1
    saved = SessionNotice.objects.for_tenant(tenant).get(pk=row.pk)
    assert (saved.kind, saved.is_read, saved.body, saved.dedupe_key) == (
        "session_assigned",
        False,
        "",
        "",
    )
    plain_sql, plain_params = row_sql.insert_sql(row)  # without: every value a parameter
    assert plain_sql != sql and len(plain_params) == len(params) + 3


@pytest.mark.postgres
def test_a_value_other_than_the_default_stays_a_parameter_whatever_it_holds():
    tenant = TenantFactory()
    hostile = "x'); DELETE FROM inbox_sessionnotice; --"
    row = notice(tenant, title=hostile, body=Label("not empty"), is_read=True)
    sql, params = row_sql.insert_sql(row, literals=True)
    assert hostile in params and "not empty" in params and True in params
    assert "DELETE" not in sql
    run(sql, params)
    saved = SessionNotice.objects.for_tenant(tenant).get(pk=row.pk)
    assert (saved.title, saved.body, saved.is_read) == (hostile, "not empty", True)


class Quoted(models.TextChoices):
    ODD = "it's 50%", "Odd"


def _default_sql(field) -> str | None:
    field.set_attributes_from_name("value")
    return row_sql._Column(field, connection).default_sql


@pytest.mark.postgres
def test_a_default_with_a_quote_or_a_percent_sign_reads_back_as_it_is():
    for field in (
        models.CharField(max_length=20, default="it's 50%"),
        models.CharField(max_length=20, default=Quoted.ODD),
    ):
        sql = _default_sql(field)
        with connection.cursor() as cursor:  # a parameter next to it: psycopg reads the text
            cursor.execute(f"SELECT {sql}, %s", ["other"])
            assert cursor.fetchone() == ("it's 50%", "other")


@pytest.mark.postgres
def test_only_defaults_text_can_say_as_the_parameter_would_become_literals():
    assert _default_sql(models.BooleanField(default=True)) == "true"
    assert _default_sql(models.PositiveIntegerField(default=0)) == "0"
    assert _default_sql(models.IntegerField(default=5)) is None  # a count that varies
    assert _default_sql(Doubled(default=0)) is None  # an integer field with its own prep
    assert _default_sql(models.JSONField(default=False)) is None  # JSON false, not boolean
    assert _default_sql(models.JSONField(default=dict)) is None  # made per row
    assert _default_sql(Shouting(max_length=10, default="quiet")) is None  # its own prep
    assert _default_sql(models.CharField(max_length=10, null=True)) is None  # NULL anyway


class Doubled(models.IntegerField):
    def get_prep_value(self, value):
        return super().get_prep_value(value) * 2


class Label(str):
    """A str of another class that is not a choice: text from anywhere."""


class Shouting(models.CharField):
    def get_prep_value(self, value):
        return super().get_prep_value(value).upper()


def test_a_field_that_prepares_values_its_own_way_is_still_asked():
    field = Shouting(max_length=10)
    field.set_attributes_from_name("word")
    plain = models.CharField(max_length=10)
    plain.set_attributes_from_name("word")
    for column, expected in ((field, "QUIET"), (plain, "quiet")):
        value_sql = row_sql._value_sql(row_sql._Column(column, connection), "quiet", connection)
        assert value_sql == (None, [expected])


@pytest.mark.postgres
def test_a_naive_datetime_is_still_made_aware_as_djangos_save_would():
    column = row_sql._Column(ActivityLog._meta.get_field("created_at"), connection)
    naive = datetime(2026, 3, 2, 10, 0)
    with pytest.warns(RuntimeWarning, match="naive datetime"):
        _, (param,) = row_sql._value_sql(column, naive, connection)
    assert param.tzinfo is not None
    aware = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    assert row_sql._value_sql(column, aware, connection) == (None, [aware])


def test_insert_rows_writes_every_row_of_every_shape_with_its_json_as_given():
    tenant = TenantFactory()
    awkward = {"quote": 'say "hi"', "backslash": "a\\b", "braces": "{x,y}", "emoji": "🙂"}
    rows = [activity(tenant, action=f"a{n}", data=awkward | {"n": n}) for n in range(5)]
    rows[2].actor_user = UserFactory()  # another shape: the others have a NULL there
    row_sql.insert_rows(rows)

    saved = {a.pk: a for a in ActivityLog.objects.for_tenant(tenant)}
    assert [saved[row.pk].data for row in rows] == [awkward | {"n": n} for n in range(5)]
    assert saved[rows[2].pk].actor_user_id == rows[2].actor_user.pk
    assert all(not row._state.adding for row in rows)


def test_insert_rows_can_skip_rows_whose_key_is_taken():
    tenant = TenantFactory()
    first = activity(tenant, action="first")
    row_sql.insert_rows([first])
    again = activity(tenant, action="again")
    again.pk = first.pk
    fresh = activity(tenant, action="fresh")
    row_sql.insert_rows([again, fresh], ignore_conflicts=True)
    actions = dict(ActivityLog.objects.for_tenant(tenant).values_list("pk", "action"))
    assert actions == {first.pk: "first", fresh.pk: "fresh"}


def test_insert_rows_keeps_the_first_of_two_rows_with_one_key_whatever_their_shapes():
    tenant = TenantFactory()
    first_shape = activity(tenant, action="a")
    other_shape = activity(tenant, action="b", actor_user=UserFactory())
    same_key = activity(tenant, action="c")
    same_key.pk = other_shape.pk
    row_sql.insert_rows([first_shape, other_shape, same_key], ignore_conflicts=True)
    assert ActivityLog.objects.for_tenant(tenant).get(pk=other_shape.pk).action == "b"


def test_a_null_is_a_parameter_on_other_databases():
    field = ActivityLog._meta.get_field("actor_user")
    elsewhere = SimpleNamespace(vendor="sqlite")
    assert row_sql._value_sql(row_sql._Column(field, elsewhere), None, elsewhere) == (None, [None])


def test_only_fields_that_compute_their_value_on_save_are_asked_for_it():
    columns = {
        name: row_sql._Column(ActivityLog._meta.get_field(name), connection)
        for name in ("created_at", "action", "actor_user")
    }
    assert columns["created_at"].computed  # auto_now_add
    assert not columns["action"].computed and not columns["actor_user"].computed
    tenant = TenantFactory()
    row = activity(tenant, action="stamped")
    row.created_at = None
    run(*row_sql.insert_sql(row))
    assert ActivityLog.objects.for_tenant(tenant).get(pk=row.pk).created_at is not None


# --- new_row: Model(**values), built the fast way ------------------------------------


def _fields(row) -> dict:
    return {f.attname: getattr(row, f.attname) for f in type(row)._meta.concrete_fields}


def test_new_row_is_the_row_keyword_construction_builds():
    from inbox.models import InboxSession

    tenant = TenantFactory()
    values = {"contact_id": "c-1", "channel": "webchat", "contact_name": "Ann", "context": {"a": 1}}
    built = row_sql.new_row(InboxSession, tenant=tenant, team=None, **values)
    expected = InboxSession(tenant=tenant, team=None, **values)
    mine, theirs = _fields(built), _fields(expected)
    # Defaults are computed anew for each row (a fresh id, the clock): equal in kind.
    for name in ("id", "created_at", "updated_at"):
        assert type(mine.pop(name)) is type(theirs.pop(name))
    assert mine == theirs
    assert built.tenant is tenant and built.team is None  # cached, no query to read them
    assert built._state.adding and built._state.db == expected._state.db
    assert built.pk != row_sql.new_row(InboxSession, tenant=tenant, **values).pk


def test_new_row_gives_every_row_its_own_callable_default_and_the_fixed_ones():
    tenant = TenantFactory()
    first = row_sql.new_row(ActivityLog, tenant=tenant, action="a")
    second = row_sql.new_row(ActivityLog, tenant=tenant, action="a")
    assert first.data == {} and first.data is not second.data  # default=dict, called
    assert first.target_label == "" and first.actor_id is None  # no default: "" or NULL
    notice = row_sql.new_row(SessionNotice, tenant=tenant, kind="session_assigned")
    assert notice.is_read is False  # default=False


@isolate_apps("audit")
def test_new_row_takes_a_foreign_keys_default_instance_by_its_key():
    from teams.models import Tenant

    default = Tenant(name="Default", slug="default")

    class Row(models.Model):  # noqa: DJ008
        tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, default=default)

        class Meta:
            app_label = "audit"

    assert row_sql.new_row(Row).tenant_id == default.pk == Row().tenant_id


@isolate_apps("audit")
def test_new_row_asks_a_field_with_its_own_default_for_each_row():
    class Fresh(models.JSONField):
        def get_default(self):
            return ["made for this row"]

    class Row(models.Model):  # noqa: DJ008
        items = Fresh()

        class Meta:
            app_label = "audit"

    first, second = row_sql.new_row(Row), row_sql.new_row(Row)
    assert first.items == ["made for this row"] and first.items is not second.items


def test_choices_members_and_booleans_are_written_as_django_would_write_them():
    from inbox.models import InboxSession

    tenant = TenantFactory()
    session = row_sql.new_row(
        InboxSession, tenant=tenant, contact_id="c", channel=Channel.WEBCHAT, context={}
    )
    run(*row_sql.insert_sql(session))
    assert InboxSession.objects.for_tenant(tenant).get().channel == "webchat"
    notice = row_sql.new_row(SessionNotice, tenant=tenant, session=session, is_read=True)
    notice.recipient = MembershipFactory(tenant=tenant)
    run(*row_sql.insert_sql(notice))
    assert SessionNotice.objects.for_tenant(tenant).get().is_read is True
    if connection.vendor == "postgresql":
        # Both now take the short way: Django's preparation is not asked again.
        def refuse(*args, **kwargs):
            raise AssertionError("prepared by Django")

        for model, field in ((InboxSession, "channel"), (SessionNotice, "is_read")):
            column = next(c for c in row_sql._plan(model, connection) if c.attname == field)
            column.field.get_db_prep_save = refuse
            try:
                row_sql.insert_sql(session if model is InboxSession else notice)
            finally:
                del column.field.get_db_prep_save


def test_new_row_takes_a_foreign_key_by_id_or_by_instance():
    tenant = TenantFactory()
    by_id = row_sql.new_row(ActivityLog, tenant_id=tenant.pk, action="a")
    by_instance = row_sql.new_row(ActivityLog, tenant=tenant, action="a")
    assert by_id.tenant_id == by_instance.tenant_id == tenant.pk
    run(*row_sql.insert_sql(by_instance))
    assert ActivityLog.objects.for_tenant(tenant).get().pk == by_instance.pk


def test_new_row_takes_a_one_to_one_field_by_instance():
    from inbox.models import InboxSession
    from outbox.services import build_message

    tenant = TenantFactory()
    message = build_message(tenant=tenant, channel="whatsapp", target="c-1", payload={})
    row = row_sql.new_row(
        InboxSession, tenant=tenant, contact_id="c-1", confirmation_message=message
    )
    assert row.confirmation_message is message
    assert row.confirmation_message_id == message.pk


def test_new_row_refuses_what_keyword_construction_refuses():
    tenant = TenantFactory()
    with pytest.raises(TypeError, match="no fields colour"):
        row_sql.new_row(ActivityLog, tenant=tenant, colour="red")
    with pytest.raises(ValueError, match="must be a Tenant instance"):
        row_sql.new_row(ActivityLog, tenant=UserFactory())


def test_new_row_runs_model_init_when_someone_listens_for_it():
    from django.db.models.signals import post_init

    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance.action)

    post_init.connect(receiver, sender=ActivityLog)
    try:
        row_sql.new_row(ActivityLog, tenant=TenantFactory(), action="watched")
    finally:
        post_init.disconnect(receiver, sender=ActivityLog)
    assert seen == ["watched"]


def test_update_sql_writes_only_the_fields_named():
    tenant = TenantFactory()
    row = activity(tenant, action="before", data={"n": 1})
    row.save()
    row.action, row.target_label, row.data = "after", "not written", {"list": [1, "two"]}
    run(*row_sql.update_sql(row, ["action", "data"]))
    saved = ActivityLog.objects.for_tenant(tenant).get(pk=row.pk)
    assert (saved.action, saved.target_label, saved.data) == ("after", "x", {"list": [1, "two"]})


@pytest.mark.postgres
def test_update_sql_from_a_source_reads_it_and_changes_nothing_when_it_is_empty():
    tenant = TenantFactory()
    row = activity(tenant, action="before")
    row.save()
    row.action = RawSQL("source.label || %s", ["!"])
    sql, params = row_sql.update_sql(row, ["action"], source="source")
    empty = f"WITH source AS (SELECT 'x'::text AS label WHERE false) {sql}"
    assert run(empty, params) == 0
    assert ActivityLog.objects.for_tenant(tenant).get(pk=row.pk).action == "before"
    assert run(f"WITH source AS (SELECT 'picked'::text AS label) {sql}", params) == 1
    assert ActivityLog.objects.for_tenant(tenant).get(pk=row.pk).action == "picked!"


# --- shapes and call sites written out once (compiled) ---------------------------------


class NoOffset(tzinfo):
    def utcoffset(self, dt):
        return None


def _comparable(answer):
    """(sql, params) with JSON parameters (psycopg's Jsonb, which has no equality) as
    what they hold, and each parameter's type: 1 and True are not the same parameter."""
    sql, params = answer
    unwrapped = [("jsonb", p.obj) if isinstance(p, Jsonb) else p for p in params]
    return sql, unwrapped, [type(p) for p in params]


def _by_the_loop(monkeypatch, row, **form):
    """insert_sql's answer from its loop over the columns, no compiled shape involved."""
    with monkeypatch.context() as patched:
        patched.setattr(row_sql, "_compiled", {})
        patched.setattr(row_sql, "_compile_shape", lambda *args: None)
        return row_sql.insert_sql(row, **form)


@pytest.mark.postgres
@pytest.mark.parametrize("literals", [True, False])
def test_a_compiled_shape_gives_each_row_what_the_loop_gives_and_only_its_own_rows(
    monkeypatch, time_machine, literals
):
    """Rows of many shapes through one form, each twice in a row and in turns: the
    second of a kind comes from its compiled shape, the others must not be taken by a
    shape compiled for another row (a value at its default or not, NULL or not, a
    RawSQL of other text, a naive timestamp, a str of another class)."""
    time_machine.move_to(datetime(2026, 12, 6, 12, 0, tzinfo=UTC), tick=False)
    tenant = TenantFactory()
    agent = MembershipFactory(tenant=tenant)
    naive = datetime(2026, 1, 2, 3, 4, 5)
    rows = [
        notice(tenant, is_read=False, body=""),
        notice(tenant, is_read=True, body="read"),
        notice(tenant, body=Label("a label")),
        notice(tenant, read_at=naive),
        # A tzinfo that gives no offset: the loop passes it as it is, as any with a tzinfo.
        notice(tenant, read_at=datetime(2026, 1, 2, tzinfo=NoOffset())),
        notice(tenant, read_at=datetime(2026, 1, 2, tzinfo=UTC)),
        notice(tenant, session_id=None, recipient_id=RawSQL("%s::uuid", [str(agent.pk)])),
        notice(tenant, recipient_id=RawSQL("(%s)::uuid", [str(agent.pk)])),
        notice(tenant, kind="session_closed", dedupe_key="x"),
        activity(tenant, data={"n": 2}),
        activity(tenant, data=None, actor_label=""),
        activity(tenant, actor_user_id=None, via=Label("api")),
    ]
    form = {"literals": literals, "source": "routed_agent", "when": "true"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the naive timestamp's
        for row in [*rows, *rows, *reversed(rows)]:
            expected = _comparable(_by_the_loop(monkeypatch, row, **form))
            assert _comparable(row_sql.insert_sql(row, **form)) == expected
    assert row_sql._compiled, "nothing was compiled"


def test_a_call_site_with_a_field_by_name_and_by_id_is_refused_every_time():
    tenant = TenantFactory()
    for _ in range(2):
        with pytest.raises(TypeError, match="tenant"):
            row_sql.new_row(ActivityLog, tenant=tenant, tenant_id=tenant.pk, action="x")


def test_a_compiled_call_site_checks_each_related_instance_and_caches_it():
    tenant, other = TenantFactory(), TenantFactory()
    first = row_sql.new_row(ActivityLog, tenant=tenant, action="first")
    second = row_sql.new_row(ActivityLog, tenant=other, action="second")
    assert (first.tenant, second.tenant) == (tenant, other)
    assert (first.tenant_id, second.tenant_id) == (tenant.pk, other.pk)
    assert first.pk != second.pk  # the id's default called for each row
    with pytest.raises(ValueError, match="tenant must be a Tenant"):
        row_sql.new_row(ActivityLog, tenant=UserFactory(), action="third")


class ZeroMeansNothing(models.IntegerField):
    """A field that prepares some values of a type to NULL and others not."""

    def get_db_prep_value(self, value, connection, prepared=False):
        return None if value == 0 else value


@pytest.mark.postgres
@isolate_apps("audit")
def test_a_compiled_shape_takes_no_prepared_value_that_the_loop_writes_otherwise(monkeypatch):
    """A value its field prepares to NULL, or one at its literal default (a zero count),
    after a shape that prepared a value of the same type to a parameter."""

    class Counted(models.Model):  # noqa: DJ008
        count = ZeroMeansNothing(null=True)
        tries = models.IntegerField(default=0)

        class Meta:
            app_label = "audit"

    form = {"literals": True}
    rows = (Counted(count=5, tries=3), Counted(count=0, tries=3), Counted(count=5))
    for row in rows * 2:
        expected = _by_the_loop(monkeypatch, row, **form)
        assert row_sql.insert_sql(row, **form) == expected
    # Each of them is taken by a shape compiled once, the NULL-prepared one too (else
    # every such row would go through the loop and be compiled again).
    compiled = row_sql._compiled[(Counted, None, None, False, True)]
    assert len(compiled) == 3
    for row in rows:
        assert any(parameters_of(row) is not None for parameters_of, _, _ in compiled)


class CountedStamp(models.DateTimeField):
    """A field that computes its value on save, counting how often it is asked."""

    asked = 0

    def pre_save(self, model_instance, add):
        CountedStamp.asked += 1
        return super().pre_save(model_instance, add)


@isolate_apps("audit")
def test_a_row_asks_each_computed_field_once_however_many_shapes_it_is_tried_against():
    class Stamped(models.Model):  # noqa: DJ008
        stamped_at = CountedStamp(auto_now=True)
        key = models.UUIDField(null=True)
        count = models.IntegerField(null=True)

        class Meta:
            app_label = "audit"

    key = uuid.uuid4()
    rows = [
        Stamped(key=key, count=1),
        Stamped(key=None, count=1),
        Stamped(key=key, count=None),
        Stamped(key=None, count=None),
    ]
    for row in rows * 2:
        before = CountedStamp.asked
        row_sql.insert_sql(row)
        assert CountedStamp.asked - before == 1
