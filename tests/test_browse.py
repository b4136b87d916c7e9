"""sql.browse outside the GUI: the per-day ingest counts a status refresh gathers."""

from __future__ import annotations

import psycopg

from sql.browse import ingested_per_day_at
from sql.migrate import migrate


def test_ingested_per_day_at(servers, pg) -> None:
    """Files that joined ingest batches today, per source, on a connection of its own; [] (not an
    error) from a database that does not answer."""
    migrate(pg)
    pg.execute("INSERT INTO source (name) VALUES ('gallery')")
    pg.execute("""INSERT INTO node (sha256, is_virtual, is_physical)
                  SELECT sha256(int8send(i)), false, true FROM generate_series(1, 3) i""")
    pg.execute("""INSERT INTO action_batch (batch_id, action_id, source_id)
                  VALUES ('b1', 0, (SELECT source_id FROM source WHERE name = 'gallery'))""")
    pg.execute("INSERT INTO batch_member (batch_id, node_id) SELECT 'b1', node_id FROM node")
    pg.commit()
    schema = pg.execute("SELECT current_schema()").fetchone()[0]
    url = psycopg.conninfo.make_conninfo(servers["database_url"], options=f"-c search_path={schema}")
    today = pg.execute("SELECT current_date").fetchone()[0]
    assert ingested_per_day_at(url) == [{"day": today, "source": "gallery", "items": 3}]
    assert ingested_per_day_at("postgresql:///nosuchdb?host=/nonexistent&connect_timeout=2") == []
