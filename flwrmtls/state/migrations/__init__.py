"""The schema's history as Alembic revisions (``versions/``), one per schema version.

Rules: each revision runs on SQLite and on PostgreSQL (SQLAlchemy types, no engine's own SQL
unless the revision says why); revision ``NNNN`` moves the schema from version NNNN - 1 to
NNNN; revisions 0001 to 0011 are the SQLite migrations of versions before PostgreSQL, ported,
so a database of any earlier version moves forward. Add a migration as the next number.
"""
