"""Row locks that hand back consistent rows."""


def first_locked(queryset, *, related: tuple[str, ...] = ()):
    """The queryset's first row locked FOR UPDATE (its own table only), with `related`
    read by select_related and pointing at the rows the locked row points at.

    When the lock waits for a transaction that changed the row, PostgreSQL returns the
    row's newest version joined to the other tables' rows as they were before the wait
    (EvalPlanQual re-reads only the locked table): a session just given to agent B comes
    back with B's id, and agent A's row no longer matching it, no agent row at all. Then
    the joined rows are read again in a second query; the lock is held by now, so the
    row's foreign keys stay as read. (A joined row changed while its key did not, an
    agent's stamp say, is not read again: nothing writes joined rows back.)
    """
    # select_related() without names would follow every non-null foreign key.
    rows = queryset.select_related(*related) if related else queryset
    row = rows.select_for_update(of=("self",)).first()
    if row is not None and _joined_rows_are_stale(row, related):
        row = rows.get(pk=row.pk)
    return row


def _joined_rows_are_stale(row, related) -> bool:
    for name in {path.split("__")[0] for path in related}:
        field = row._meta.get_field(name)
        joined = field.get_cached_value(row, default=None)
        joined_key = getattr(joined, field.target_field.attname, None)
        if joined_key != getattr(row, field.attname):
            return True
    return False
