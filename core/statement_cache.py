"""Let psycopg remember the conversion of our long, fixed statements.

psycopg turns a statement's text into the server's form (`%s` to `$n`, with a regular
expression over the whole text) on every run, unless it remembers it: it does so only
for texts of at most 4,096 bytes with at most 50 parameters (`psycopg._queries`), a
guard against ORM statements whose text changes with every batch size. The handover's
pick statement carries the new session's writes (about 5 KB, 74 parameters) and its text
changes only with the handover's shape (the pool's kind, which rows it writes, which
values are NULL or their field's default: a few texts per deployment), so it was
converted again on every handover. The limits are raised to fit
it with room to spare; the cache stays an LRU of 128 entries, so the occasional long
statement of a varying text only pushes out an old entry.
"""

from psycopg import _queries

MAX_STATEMENT_LENGTH = 16 * 1024
MAX_STATEMENT_PARAMS = 200


def remember_long_statements() -> None:
    _queries.MAX_CACHED_STATEMENT_LENGTH = max(
        _queries.MAX_CACHED_STATEMENT_LENGTH, MAX_STATEMENT_LENGTH
    )
    _queries.MAX_CACHED_STATEMENT_PARAMS = max(
        _queries.MAX_CACHED_STATEMENT_PARAMS, MAX_STATEMENT_PARAMS
    )
