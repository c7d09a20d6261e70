"""The state database (SQLite file or PostgreSQL): connection, schema migrations and
transactions, under the sync state, the forwarder's spool, reports and alerts."""
