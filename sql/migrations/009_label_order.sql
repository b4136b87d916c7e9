-- hoardfs schema, migration 009: the labels of a key, newest node first. The asset search
-- (sql/browse.py: a label filter under ORDER BY node_id DESC LIMIT a page) found a key held
-- only by old nodes by walking label_pkey (node_id, key, value) backwards with the key as a
-- condition on its second column: every newer node's label entries read first (998,000 at
-- 1,000,000 labels). These give a key's — and a key=value's — nodes in node order, so a page
-- is a few index blocks whatever the nodes' age.

CREATE INDEX label_key_node ON label (key, node_id);
CREATE INDEX label_key_value_node ON label (key, value, node_id);
DROP INDEX label_key_value;  -- its leading columns are label_key_value_node's
