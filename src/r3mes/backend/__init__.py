"""The product service for people: accounts, credits, paid chat, the explorer, the dashboard.

One FastAPI app built by `create_app(settings)` (`r3mes backend start`), shaped like the
full-stack FastAPI template:

- `api/routes/`  one thin router per resource; `api/deps.py` the `Annotated` dependencies;
- `services/`    the rules (login, keys, credit ledger, gateway, limits, indexer, payouts);
- `db/`          SQLAlchemy 2 models, sessions and the Alembic migrations (shipped inside);
- `web/`         the dashboard's static assets, served at `/`.

SQLite (WAL) in `$R3MES_HOME` and in-process caches by default; PostgreSQL and Redis by URL.
Nothing is created at import time.
"""
