"""S05 database: the schema (migrations), write-intents, selectors, backups.

Other systems never write SQL: they hand `apply_write_intent` a `WriteIntent` and ask
`query_nodes` for node sets. Every function takes an explicit connection.
"""

from hoardfs.sql.apply import apply_write_intent as apply_write_intent
from hoardfs.sql.intents import WriteIntent as WriteIntent
from hoardfs.sql.intents import parse_intent as parse_intent
from hoardfs.sql.migrate import migrate as migrate
from hoardfs.sql.selectors import Selector as Selector
from hoardfs.sql.selectors import query_nodes as query_nodes

__all__ = ["Selector", "WriteIntent", "apply_write_intent", "migrate", "parse_intent", "query_nodes"]
