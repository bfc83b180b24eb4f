"""One row's INSERT (or UPDATE) as SQL text and parameters, the text built once per shape.

The handover writes a handful of rows inside one statement (the pick, with the new
session's writes attached), so their SQL has to be text to splice, not `save()` calls.
Django's compiler builds that text anew for every row, walking every field through half
a dozen methods: it was a third of a handover's time. Here the text of a shape (model,
which fields hold a `RawSQL` expression and which one, the statement's form) is built
once per process; a call only computes the row's parameters, each field through
`pre_save` and `get_db_prep_save` as the compiler would do it (defaults, `auto_now`,
JSON adaptation apply the same way).

Values may be `RawSQL` (SQL reading a CTE of the same statement), and a NULL is part of
the text rather than a parameter; a row with any other expression, or a model with a
field that needs its own placeholder, goes through Django's compiler as before.
"""

import threading
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, router
from django.db.models.base import ModelState
from django.db.models.constants import OnConflict
from django.db.models.expressions import RawSQL
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute
from django.db.models.signals import post_init, pre_init
from django.db.models.sql.subqueries import InsertQuery

_shapes: dict = {}
_lock = threading.Lock()


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _plain(fields) -> bool:
    return not any(hasattr(field, "get_placeholder") for field in fields)


# Field classes whose preparation of a value of these exact types (an aware datetime
# only) gives the value itself, on PostgreSQL: a row's strings, ids and timestamps skip
# the half a dozen calls of `get_db_prep_save`, which were a tenth of a handover.
_PREPARED_AS_IS = (
    (models.CharField, frozenset({str, type(None)})),
    (models.TextField, frozenset({str, type(None)})),
    (models.UUIDField, frozenset({uuid.UUID, type(None)})),
    (models.DateTimeField, frozenset({datetime, type(None)})),
    (models.BooleanField, frozenset({bool, type(None)})),
)
# The string fields above give any str subclass back as it is (`to_python`: "if
# isinstance(value, str)"): a choices enum's member, a string of its own class, too.
_PREPARATION = ("get_db_prep_save", "get_db_prep_value", "get_prep_value", "to_python")
_as_is: dict = {}


def _kept_as_is(field, db) -> frozenset:
    """The value types `field` would pass to the database unchanged (none but on
    PostgreSQL, and none for a field that prepares values its own way)."""
    key = (field, db.vendor, settings.USE_TZ)
    kept = _as_is.get(key)
    if kept is None:
        kept = frozenset()
        target = field
        if type(field).get_db_prep_save is models.ForeignKey.get_db_prep_save:
            target = field.target_field  # a foreign key prepares as the key it points at
        if db.vendor == "postgresql" and settings.USE_TZ:
            for base, types in _PREPARED_AS_IS:
                if isinstance(target, base) and all(
                    getattr(type(target), name) is getattr(base, name) for name in _PREPARATION
                ):
                    kept = types
                    break
        _as_is[key] = kept
    return kept


_nulls: dict = {}


def _null_sql(field, db) -> str:
    key = (field, db.vendor)
    sql = _nulls.get(key)
    if sql is None:
        db_type = field.cast_db_type(db)
        sql = _nulls[key] = f"NULL::{db_type}" if db_type else "NULL"
    return sql


def _remember(key, build):
    shape = _shapes.get(key)
    if shape is None:
        shape = build()
        with _lock:
            _shapes[key] = shape
    return shape


class _Column:
    """How one field's value becomes SQL, worked out once per model and database."""

    __slots__ = (
        "attname",
        "computed",
        "default",
        "default_sql",
        "field",
        "kept",
        "null_sql",
        "takes_str_subclasses",
    )

    def __init__(self, field, db):
        self.field = field
        self.attname = field.attname
        self.computed = _computes_on_save(field)  # `pre_save` must run (auto_now, …)
        self.kept = _kept_as_is(field, db)
        # Such a column learns each str subclass it meets (added to `kept`).
        self.takes_str_subclasses = str in self.kept
        # The field's default as SQL text, when it is a constant that text can say.
        self.default, self.default_sql = _default_literal(field, self.kept)
        # On PostgreSQL a NULL is written into the text (typed, as a row built by SELECT
        # needs it): a handover's statement has a dozen, each a parameter less to adapt.
        self.null_sql = _null_sql(field, db) if db.vendor == "postgresql" else None


def _computes_on_save(field) -> bool:
    """Whether `field.pre_save` does more than read the attribute (as `Field.pre_save`
    does, and a date field's without auto_now / auto_now_add)."""
    pre_save = type(field).pre_save
    if pre_save is models.Field.pre_save:
        return False
    if pre_save in (models.DateField.pre_save, models.DateTimeField.pre_save):
        return field.auto_now or field.auto_now_add
    return True


def _value_sql(column: _Column, value, db) -> tuple[str | None, list]:
    """(the expression's SQL, its params) for a RawSQL value or a NULL written into the
    text; (None, [param]) else."""
    if isinstance(value, RawSQL):
        return f"({value.sql})", list(value.params)
    kind = type(value)
    if kind in column.kept and (kind is not datetime or value.tzinfo):
        if value is None and column.null_sql:
            return column.null_sql, []
        return None, [value]
    param = column.field.get_db_prep_save(value, connection=db)
    if param is None and column.null_sql:
        return column.null_sql, []
    return None, [param]


_plans: dict = {}


def _plan(model, db) -> list[_Column] | None:
    """The columns of `model`'s rows, or None when a field needs its own placeholder
    (Django's compiler writes those rows)."""
    key = (model, db.vendor, settings.USE_TZ)
    plan = _plans.get(key, False)
    if plan is False:
        fields = model._meta.local_concrete_fields
        plan = [_Column(field, db) for field in fields] if _plain(fields) else None
        _plans[key] = plan
    return plan


def _plain_integer(field) -> bool:
    """An integer field that prepares values as IntegerField does (a 0 is a 0)."""
    return isinstance(field, models.IntegerField) and all(
        getattr(type(field), name) is getattr(models.IntegerField, name)
        for name in ("get_db_prep_save", "get_db_prep_value", "get_prep_value")
    )


def _default_literal(field, kept) -> tuple[object, str | None]:
    """(the field's default, its SQL text) when the default is a constant of code that
    text can say as the parameter would (a flag, the integer 0, a string: a choices
    member, the empty string); (None, None) else. `%` is doubled: psycopg reads the text
    for placeholders."""
    default = _default_of(field)
    if type(default) is bool:
        return (default, "true" if default else "false") if bool in kept else (None, None)
    if type(default) is int:
        return (default, "0") if default == 0 and _plain_integer(field) else (None, None)
    if isinstance(default, str) and str in kept:
        text = str.__str__(default)  # what the parameter sends, for a choices member too
        return default, "'" + text.replace("'", "''").replace("%", "%%") + "'"
    return None, None


def _is_default(column: "_Column", value) -> bool:
    default = column.default
    if type(default) is bool:
        return value is default
    if isinstance(default, str):
        return isinstance(value, str) and value == default
    return type(value) is int and value == default


def insert_sql(
    obj,
    *,
    when: str | None = None,
    source: str | None = None,
    ignore_conflicts: bool = False,
    literals: bool = False,
) -> tuple[str, list]:
    """`INSERT INTO t (…) VALUES (…)` for one unsaved instance, or with `when`
    `INSERT INTO t (…) SELECT … WHERE when` (a row that goes in only if `when` holds);
    with `source` too, `SELECT … FROM source WHERE when`: a row for each row of
    `source` (a CTE of the same statement), whose columns the row's RawSQL values and
    `when` may name. `ignore_conflicts`: ON CONFLICT DO NOTHING. `literals`: a value
    equal to its field's constant default (a status, a flag, an empty string, a zero
    count) goes into the text instead of being adapted and bound as a parameter on every
    run, for a statement run again and again; a column then has two shapes at most.
    """
    model = type(obj)
    form = (model, when, source, ignore_conflicts, literals)
    for parameters_of, sql, _ in _compiled.get(form, ()):
        params = parameters_of(obj)
        if params is not None:
            return sql, params
    # The connection itself, not the proxy: every field asks it something.
    db = connections[DEFAULT_DB_ALIAS]
    plan = _plan(model, db)
    if plan is None:
        return _insert_with_compiler(
            obj, when=when, source=source, ignore_conflicts=ignore_conflicts
        )
    # One pass over the columns; the common values (strings, ids, aware timestamps,
    # NULLs) take the shortest way. How each column went is kept, to compile the shape.
    state = obj.__dict__
    shape, params, ways = [], [], []
    for column in plan:
        value = column.field.pre_save(obj, True) if column.computed else state[column.attname]
        kind = type(value)
        if literals and column.default_sql is not None and _is_default(column, value):
            shape.append(column.default_sql)
            ways.append(_DEFAULT)
        elif kind in column.kept and (kind is not datetime or value.tzinfo):
            if value is None and column.null_sql:
                shape.append(column.null_sql)
                ways.append(_NULL)
            else:
                shape.append(None)
                params.append(value)
                ways.append(_AS_IS)
        elif column.takes_str_subclasses and issubclass(kind, str):
            column.kept = column.kept | {kind}
            shape.append(None)
            params.append(value)
            ways.append(_AS_IS)
        elif hasattr(value, "resolve_expression") and kind is not RawSQL:
            return _insert_with_compiler(
                obj, when=when, source=source, ignore_conflicts=ignore_conflicts
            )
        else:
            sql, value_params = _value_sql(column, value, db)
            shape.append(sql)
            params += value_params
            if kind is RawSQL:
                ways.append(_RAW)
            elif sql is None:
                ways.append((_PREPARED, kind))
            elif value is None:
                ways.append(_NULL)
            else:  # a value its field prepared to NULL
                ways.append((_PREPARED_TO_NULL, kind))
    key = ("insert", *form, tuple(shape))

    def build() -> str:
        columns = ", ".join(_quote(column.field.column) for column in plan)
        row = ", ".join(sql or "%s" for sql in shape)
        head = f"INSERT INTO {_quote(model._meta.db_table)} ({columns}) "
        body = _select_body(row, when=when, source=source)
        return head + body + (" ON CONFLICT DO NOTHING" if ignore_conflicts else "")

    sql = _remember(key, build)
    _compile_shape(form, plan, shape, ways, literals, sql)
    return sql, params


# How a column's value went into a row's shape (insert_sql), for _compile_shape.
_DEFAULT, _NULL, _AS_IS, _RAW = "default", "null", "as is", "raw"
_PREPARED, _PREPARED_TO_NULL = "prepared", "prepared to null"
# Compiled shapes per (model, when, source, ignore_conflicts, literals), newest first:
# (the function giving a row's parameters, or None when the row has another shape; the
# shape's SQL; what the function checks).
_compiled: dict = {}
_SHAPES_PER_FORM = 8


def _compile_shape(form, plan, shape, ways, literals: bool, sql: str) -> None:
    """Compile a function that gives a row's parameters as insert_sql's loop would, for
    rows of this shape only, and None for any other row (insert_sql's loop then takes
    it). A handover builds six rows, each a pass over a dozen or two columns that asks
    every value what it is: written out once per shape, the pass is a few comparisons
    per column. Each column keeps the way it went (its literal default, a NULL, the
    value as it is, a RawSQL of the same text, a value of the same type prepared by its
    field), and the checks reject any value that insert_sql's loop would take another
    way."""
    names = {"RawSQL": RawSQL, "datetime": datetime, "connections": connections}
    lines = ["def parameters_of(row):", "    s = row.__dict__"]
    if any(type(way) is tuple for way in ways):
        lines.append(f"    db = connections[{DEFAULT_DB_ALIAS!r}]")
    # The columns whose value `pre_save` computes (auto_now) come last: a row of another
    # shape is turned away before anything is computed for it, as the loop computes
    # each such value once.
    order = sorted(range(len(plan)), key=lambda n: plan[n].computed)
    parameters = {}
    for n in order:
        column, text, way = plan[n], shape[n], ways[n]
        names[f"F{n}"] = column.field
        if column.computed:
            lines.append(f"    v = F{n}.pre_save(row, True)")
        else:
            lines.append(f"    v = s[{column.attname!r}]")
        is_default = _default_test(column, n, names) if literals else None
        if way == _DEFAULT:
            lines.append(f"    if not ({is_default}): return None")
        elif way == _NULL:
            lines.append("    if v is not None: return None")
        elif way == _RAW:
            names[f"S{n}"] = text[1:-1]  # the shape holds "(sql)"
            lines.append(f"    if type(v) is not RawSQL or v.sql != S{n}: return None")
            lines.append(f"    c{n} = v.params")
            parameters[n] = f"*c{n}"
        elif way == _AS_IS:
            names[f"K{n}"] = kept = column.kept
            lines.append(f"    if type(v) not in K{n}: return None")
            if datetime in kept:
                lines.append("    if type(v) is datetime and not v.tzinfo: return None")
            if type(None) in kept and column.null_sql:
                lines.append("    if v is None: return None")
            if is_default:
                lines.append(f"    if {is_default}: return None")
            lines.append(f"    c{n} = v")
            parameters[n] = f"c{n}"
        else:  # a value of one type, prepared by its field (to NULL, or to a parameter)
            names[f"T{n}"] = way[1]
            lines.append(f"    if type(v) is not T{n}: return None")
            if way[1] in column.kept:  # a naive datetime: one with a tzinfo goes as it is
                lines.append("    if v.tzinfo: return None")
            if is_default:
                lines.append(f"    if {is_default}: return None")
            lines.append(f"    x = F{n}.get_db_prep_save(v, connection=db)")
            if way[0] == _PREPARED_TO_NULL:
                lines.append("    if x is not None: return None")
            else:
                if column.null_sql:
                    lines.append("    if x is None: return None")
                lines.append(f"    c{n} = x")
                parameters[n] = f"c{n}"
    lines.append(f"    p = [{', '.join(parameters[n] for n in sorted(parameters))}]")
    lines.append("    return p")
    # One text may have several compiled checks (a timestamp as it is, or prepared).
    checks = "\n".join(lines), tuple(names.items())
    known = _compiled.get(form, ())
    # A form's first shapes are its common ones; rows of any further shape take the loop
    # rather than compiling again and again.
    if len(known) >= _SHAPES_PER_FORM or any(existing[2] == checks for existing in known):
        return
    model = form[0]
    code = compile(checks[0], f"<insert_sql {model.__name__}>", "exec")
    exec(code, names)  # noqa: S102 (the text is ours: column names are repr()'d)
    compiled = (names["parameters_of"], sql, checks)
    with _lock:
        known = _compiled.get(form, ())
        if len(known) < _SHAPES_PER_FORM and all(existing[2] != checks for existing in known):
            _compiled[form] = (compiled, *known)


def _default_test(column: "_Column", n: int, names: dict) -> str | None:
    """`_is_default(column, v)` as an expression, for a column with a literal default."""
    if column.default_sql is None:
        return None
    default = names[f"D{n}"] = column.default
    if type(default) is bool:
        return f"v is D{n}"
    if isinstance(default, str):
        return f"isinstance(v, str) and v == D{n}"
    return f"type(v) is int and v == D{n}"


def _forget_compiled_shapes(*, setting, **kwargs) -> None:
    # A shape's checks hold what USE_TZ decided for the column (see _kept_as_is).
    if setting == "USE_TZ":
        with _lock:
            _compiled.clear()


setting_changed.connect(_forget_compiled_shapes)


def update_sql(obj, fields, *, source: str | None = None) -> tuple[str, list]:
    """`UPDATE t SET … WHERE pk = …` of `fields` of a saved instance, as
    `save(update_fields=fields)` would write them (`auto_now` applies); with `source` (a
    CTE of the same statement) `UPDATE … FROM source`: values may be RawSQL reading it,
    and no row changes when it is empty. Not a hot path: the text is built each call."""
    model = type(obj)
    db = connections[DEFAULT_DB_ALIAS]
    table = _quote(model._meta.db_table)
    assignments, params = [], []
    for name in fields:
        field = model._meta.get_field(name)
        value = field.pre_save(obj, False)
        if isinstance(value, RawSQL):
            assignments.append(f"{_quote(field.column)} = ({value.sql})")
            params += value.params
        else:
            assignments.append(f"{_quote(field.column)} = %s")
            params.append(field.get_db_prep_save(value, connection=db))
    pk = model._meta.pk
    sql = f"UPDATE {table} SET {', '.join(assignments)}"  # noqa: S608
    sql += f" FROM {source}" if source else ""
    sql += f" WHERE {table}.{_quote(pk.column)} = %s"
    return sql, [*params, pk.get_db_prep_value(obj.pk, connection=db)]


def _select_body(row: str, *, when: str | None, source: str | None) -> str:
    if not when and not source:
        return f"VALUES ({row})"
    source_sql = f" FROM {source}" if source else ""
    return f"SELECT {row}{source_sql} WHERE {when or 'true'}"


def _insert_with_compiler(obj, *, when, source, ignore_conflicts) -> tuple[str, list]:
    model = type(obj)
    query = InsertQuery(model, on_conflict=OnConflict.IGNORE if ignore_conflicts else None)
    query.insert_values(model._meta.local_concrete_fields, [obj])
    ((sql, params),) = query.get_compiler(connection=connection).as_sql()
    if when or source:
        head, _, rest = sql.partition(" VALUES (")
        values, _, tail = rest.rpartition(")")
        sql = f"{head} {_select_body(values, when=when, source=source)}{tail}"
    return sql, list(params)


def insert_rows(objs: list, *, ignore_conflicts: bool = False) -> None:
    """Insert unsaved instances of one model (their foreign keys set by id), as
    `bulk_create` would, but on PostgreSQL one statement per run of rows of one shape,
    run for all of them at once (`executemany`, pipelined by psycopg): `bulk_create`
    passes each column as one array, whose text psycopg escapes value by value with
    regular expressions, most of a big batch's time (JSON payloads above all)."""
    if not objs:
        return
    model = type(objs[0])
    if connection.vendor != "postgresql":
        model._base_manager.bulk_create(objs, ignore_conflicts=ignore_conflicts)
        return
    # Runs of rows of one shape, in the given order: with `ignore_conflicts` the first of
    # two rows with one key is the one that stays, as with `bulk_create`.
    runs: list[tuple[str, list]] = []
    for obj in objs:
        sql, params = insert_sql(obj, ignore_conflicts=ignore_conflicts)
        if runs and runs[-1][0] == sql:
            runs[-1][1].append(params)
        else:
            runs.append((sql, [params]))
    with connection.cursor() as cursor:
        for sql, rows in runs:
            cursor.executemany(sql, rows)
    for obj in objs:
        obj._state.adding = False
        obj._state.db = DEFAULT_DB_ALIAS


_constructions: dict = {}


@dataclass(frozen=True)
class _Construction:
    # (name, attname, the forward foreign key or None, its default), in field order; the
    # default is a value, or a _DefaultCall to make it for each row.
    fields: list
    attnames: tuple
    # Every field's attribute is Django's plain one (a foreign key's id included): set
    # on a new instance it only stores the value, so the values can go into its
    # __dict__ at once, as Model.__init__ would leave them.
    plain: bool


_PLAIN_ATTRIBUTES = (DeferredAttribute, ForeignKeyDeferredAttribute)


@dataclass(frozen=True)
class _DefaultCall:
    make: object


def _default_of(field):
    """What `field.get_default()` gives, as a value when it gives the same one every
    time (no default: None or ""; a default that is not callable: that object, as
    Django hands out), else a _DefaultCall of the function that makes it."""
    if type(field).get_default not in (models.Field.get_default, models.ForeignKey.get_default):
        return _DefaultCall(field.get_default)  # a field's own idea of a default
    if not field.has_default() and field.db_default is models.NOT_PROVIDED:
        return field.get_default()  # None, or "" for a string that may not be NULL
    if not callable(field.default) and type(field).get_default is models.Field.get_default:
        return field.default
    return _DefaultCall(field.get_default)


def _construction(model) -> _Construction:
    plan = _constructions.get(model)
    if plan is None:
        fields = model._meta.concrete_fields
        plan = _constructions[model] = _Construction(
            fields=[
                (
                    field.name,
                    field.attname,
                    field if isinstance(field, models.ForeignKey) else None,
                    _default_of(field),
                )
                for field in fields
            ],
            attnames=tuple(field.attname for field in fields),
            plain=model.__init__ is models.Model.__init__
            and all(type(getattr(model, f.attname, None)) in _PLAIN_ATTRIBUTES for f in fields),
        )
    return plan


def new_row(model, /, **values):
    """`model(**values)` for a row about to be inserted, built the way `from_db` builds
    a loaded one: every field's value in order (its default when not given), stored at
    once. A handover builds six rows; keyword construction, each value through its
    field's descriptor, was a third of the time spent building them. A model with its
    own __init__, a field with its own descriptor or a pre_init/post_init receiver gets
    `Model.__init__` with the values as positional arguments.

    `values` are concrete fields by name or attname; a foreign key given by name takes
    the related instance (checked and cached on the row, as its descriptor does).

    Each call site (a model and the names it gives) gets the loop below written out
    once (`_compile_builder`): a value, a default or a default's call per field in
    order, then the row."""
    given = tuple(values)
    build = _builders.get((model, given))
    if build is None:
        build = _compile_builder(model, given)
    if build is not False:
        return build(values)
    plan = _construction(model)
    args, related = [], []
    for name, attname, foreign_key, default in plan.fields:
        if attname in values:
            args.append(values.pop(attname))
        elif foreign_key is not None and name in values:
            target = values.pop(name)
            _check_related(model, name, foreign_key, target)
            related.append((foreign_key, target))
            key = foreign_key.target_field.attname
            args.append(None if target is None else getattr(target, key))
        elif type(default) is _DefaultCall:
            args.append(default.make())
        else:
            args.append(default)
    if values:
        raise TypeError(f"{model.__name__} has no fields {', '.join(sorted(values))}")
    row = _row_of(model, plan, args)
    for foreign_key, target in related:
        _cache_related(row, foreign_key, target)
    return row


def _check_related(model, name: str, foreign_key, target) -> None:
    if target is not None and not isinstance(
        target, foreign_key.remote_field.model._meta.concrete_model
    ):
        expected = foreign_key.remote_field.model.__name__
        raise ValueError(f"{model.__name__}.{name} must be a {expected} instance")


def _row_of(model, plan: _Construction, args):
    if plan.plain and not (_listened(pre_init, model) or _listened(post_init, model)):
        row = model.__new__(model)
        row._state = ModelState()
        row.__dict__.update(zip(plan.attnames, args, strict=True))
        return row
    return model(*args)


def _cache_related(row, foreign_key, target) -> None:
    if target is not None:
        if row._state.db is None:
            row._state.db = router.db_for_write(type(row), instance=target)
        if target._state.db is None:
            target._state.db = router.db_for_write(type(target), instance=row)
    foreign_key.set_cached_value(row, target)


# new_row's builders per (model, the names a call gives, in its order); False for names
# the loop has to sort out (an unknown one, a field given by name and attname both).
_builders: dict = {}


def _compile_builder(model, given: tuple):
    plan = _construction(model)
    by_attname = {attname: n for n, (_, attname, _, _) in enumerate(plan.fields)}
    by_name = {name: n for n, (name, _, fk, _) in enumerate(plan.fields) if fk is not None}
    taken = [by_attname.get(key, by_name.get(key)) for key in given]
    if None in taken or len(set(taken)) != len(taken):
        _builders[(model, given)] = False
        return False
    names = {
        "model": model,
        "plan": plan,
        "row_of": _row_of,
        "check_related": _check_related,
        "cache_related": _cache_related,
    }
    lines, related = ["def build(values):"], []
    for n, (name, attname, foreign_key, default) in enumerate(plan.fields):
        if attname in given:
            lines.append(f"    a{n} = values[{attname!r}]")
        elif foreign_key is not None and name in given:
            names[f"FK{n}"] = foreign_key
            names[f"K{n}"] = foreign_key.target_field.attname
            lines.append(f"    t{n} = values[{name!r}]")
            lines.append(f"    check_related(model, {name!r}, FK{n}, t{n})")
            lines.append(f"    a{n} = None if t{n} is None else getattr(t{n}, K{n})")
            related.append(n)
        elif type(default) is _DefaultCall:
            names[f"D{n}"] = default.make
            lines.append(f"    a{n} = D{n}()")
        else:
            names[f"D{n}"] = default
            lines.append(f"    a{n} = D{n}")
    args = ", ".join(f"a{n}" for n in range(len(plan.fields)))
    lines.append(f"    row = row_of(model, plan, ({args},))")
    lines += [f"    cache_related(row, FK{n}, t{n})" for n in related]
    lines.append("    return row")
    code = compile("\n".join(lines), f"<new_row {model.__name__}>", "exec")
    exec(code, names)  # noqa: S102 (the text is ours: field names are repr()'d)
    _builders[(model, given)] = names["build"]
    return names["build"]


def _listened(signal, model) -> bool:
    # Nobody connected at all, the common case, is a look at a list.
    return bool(signal.receivers) and signal.has_listeners(model)
