-- hoardfs schema, migration 010: a label's value may be as long as it needs (a polygon of many
-- points drawn in Label Studio, a long caption). The primary key (node_id, key, value) and the
-- index label_key_value_node (key, value, node_id) put the whole value into b-tree entries,
-- which PostgreSQL caps at 2,704 bytes: a longer value was refused ("index row size exceeds
-- btree version 4 maximum"). Both now index md5(value) instead; a lookup by value says
-- `md5(l.value) = md5(x) AND l.value = x` (sql/selectors.py, browse.py, labels.py, apply.py).
-- Two different values of one key on one node with the same md5 count as one label (the
-- second is not added) — only a deliberately made collision does that.

ALTER TABLE label DROP CONSTRAINT label_pkey;
CREATE UNIQUE INDEX label_node_key_value ON label (node_id, key, md5(value));
CREATE INDEX label_key_md5_node ON label (key, md5(value), node_id);
DROP INDEX label_key_value_node;
