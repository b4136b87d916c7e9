"""What each action has done with each input (`action_memo`, migration 019): the run that ran
an action's worker (its version, on parameters of one digest) on an input node. A run over a
selection stages and runs only the inputs this does not name for its key; the rows are written
by the apply intent of the run that did the work (hoardfs.sql.apply, the intent's `memo`)."""

from __future__ import annotations

import re

import psycopg


def done_by(conn: psycopg.Connection, action_id: int, version: int, params_digest: str,
            inputs: list[str]) -> dict[str, str]:
    """{input sha256 (hex): the run that ran it} for the `inputs` action `action_id` v`version`
    ran on parameters of digest `params_digest` (hex) — the inputs left out are not done.

    An input is done only while what its run made of it is still there: the run is recorded
    done (its `done` action_event) and none of the children it made from that input (an edge of
    the action's own relationship type from the input to a node located `action:<run>/…`) is
    deleted — `hoard delete --node` of a child, or a batch drop that took it, makes the input
    not done, so the next run runs it again and its output is there to ask for. A hidden child
    (`hoard delete --node`: the team's decision, which storing the bytes again does not undo)
    that an earlier run of the action had made too is not such a reason: the run re-made the
    bytes it was hidden for, and running it again would make them once more, hidden — the
    input is done (`--rerun` runs it anyway)."""
    if not inputs:
        return {}
    return {bytes(sha).hex(): run for sha, run in conn.execute(
        "SELECT n.sha256, m.run_id FROM action_memo m JOIN node n USING (node_id) "
        "WHERE m.action_id = %s AND m.version = %s AND m.params_digest = %s AND n.sha256 = ANY(%s) "
        "AND EXISTS (SELECT 1 FROM action_event ev WHERE ev.batch_id = m.run_id AND ev.status = 'done') "
        "AND NOT EXISTS (SELECT 1 FROM edge e JOIN relationship_type r ON r.rel_id = e.rel_id "
        "  JOIN physical_content pc ON pc.node_id = e.child_id "
        "  WHERE e.parent_id = m.node_id AND r.action_id = m.action_id AND pc.is_deleted "
        "  AND EXISTS (SELECT 1 FROM physical_path p WHERE p.node_id = e.child_id "
        "    AND starts_with(p.locator, 'action:' || m.run_id || '/')) "
        "  AND NOT (pc.is_hidden AND EXISTS (SELECT 1 FROM physical_path q JOIN action_batch b "
        "    ON b.batch_id = split_part(substr(q.locator, 8), '/', 1) WHERE q.node_id = e.child_id "
        "    AND starts_with(q.locator, 'action:') AND b.batch_id <> m.run_id AND b.action_id = m.action_id)))",
        [action_id, version, bytes.fromhex(params_digest), [bytes.fromhex(h) for h in inputs]]).fetchall()}


#: a run id's version (hoardfs.jobs.actions.state.RUN_ID: ACTION-vVERSION-KEY)
_VERSION = re.compile(r"-v([0-9]+)-[0-9a-f]{12}$")


def made_by(conn: psycopg.Connection, node_id: int) -> list[dict[str, object]]:
    """The action runs that made node `node_id` (an action's child is located
    `action:<run>/<path>`, and the run is its batch): each {action, version, run}, by run."""
    return [{"action": name, "version": int(m.group(1)) if (m := _VERSION.search(run)) else None, "run": run}
            for run, name in conn.execute(
        "SELECT DISTINCT b.batch_id, a.name FROM physical_path p "
        "JOIN action_batch b ON b.batch_id = split_part(substr(p.locator, 8), '/', 1) "
        "JOIN action a ON a.action_id = b.action_id "
        "WHERE p.node_id = %s AND p.locator LIKE 'action:%%' ORDER BY 1", [node_id]).fetchall()]
