"""The coordination tables of the relays sharing one PostgreSQL database (schema
``spacenb_live``), and the statements :class:`~spacenb.server.cluster.Cluster` runs on them:
the relays' heartbeats, who is online through which relay, the shared token buckets and
the usage counted for quotas.

The tables are ``UNLOGGED`` in a schema of their own: they hold live state, not data (a
crash empties them; usage is then counted again from the messages). The tables of the
data itself are in :mod:`spacenb.server.pgschema`.
"""

from __future__ import annotations

__all__: list[str] = []

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS spacenb_live;
CREATE UNLOGGED TABLE IF NOT EXISTS spacenb_live.relays (
    relay_id TEXT COLLATE "C" PRIMARY KEY,
    seen     TIMESTAMPTZ NOT NULL
);
CREATE UNLOGGED TABLE IF NOT EXISTS spacenb_live.presence (
    space_id TEXT COLLATE "C" NOT NULL,
    username TEXT COLLATE "C" NOT NULL,
    relay_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (space_id, username, relay_id)
);
CREATE UNLOGGED TABLE IF NOT EXISTS spacenb_live.buckets (
    username TEXT COLLATE "C" PRIMARY KEY,
    tokens   DOUBLE PRECISION NOT NULL,
    stamp    TIMESTAMPTZ NOT NULL,
    granted  INTEGER NOT NULL
);
CREATE UNLOGGED TABLE IF NOT EXISTS spacenb_live.usage (
    username TEXT COLLATE "C" PRIMARY KEY,
    messages BIGINT NOT NULL,
    bytes    BIGINT NOT NULL
);
"""

# Refill, then take up to %(want)s whole tokens; ``granted`` says how many were taken.
_REFILLED = (
    "LEAST(%(burst)s, b.tokens + %(rate)s * "
    "GREATEST(extract(epoch FROM clock_timestamp() - b.stamp), 0))"
)
TAKE_TOKENS = f"""
INSERT INTO spacenb_live.buckets AS b (username, tokens, stamp, granted)
VALUES (%(user)s, %(burst)s - LEAST(%(want)s, %(burst)s), clock_timestamp(),
        LEAST(%(want)s, %(burst)s))
ON CONFLICT (username) DO UPDATE SET
    granted = LEAST(%(want)s, floor({_REFILLED})),
    tokens = {_REFILLED} - LEAST(%(want)s, floor({_REFILLED})),
    stamp = clock_timestamp()
RETURNING granted, tokens
"""
CHARGE = """
UPDATE spacenb_live.usage SET messages = GREATEST(messages + %(count)s, 0),
                              bytes = GREATEST(bytes + %(size)s, 0)
WHERE username = %(user)s
  AND (%(count)s <= 0 OR %(most_messages)s::bigint IS NULL
       OR messages + %(count)s <= %(most_messages)s::bigint)
  AND (%(size)s <= 0 OR %(most_bytes)s::bigint IS NULL
       OR bytes + %(size)s <= %(most_bytes)s::bigint)
RETURNING messages
"""
COUNT_USAGE = """
INSERT INTO spacenb_live.usage (username, messages, bytes)
SELECT %(user)s, count(*), coalesce(sum(length(ciphertext)), 0) FROM messages
WHERE source = %(user)s
ON CONFLICT DO NOTHING
"""
HEARTBEAT = """
INSERT INTO spacenb_live.relays AS r VALUES (%s, clock_timestamp())
ON CONFLICT (relay_id) DO UPDATE SET seen = clock_timestamp()
RETURNING (xmax = 0) AS inserted
"""
EXPIRE = """
WITH gone AS (
    DELETE FROM spacenb_live.relays
    WHERE seen < clock_timestamp() - make_interval(secs => %(expiry)s) RETURNING relay_id
), cleared AS (
    DELETE FROM spacenb_live.presence WHERE relay_id IN (SELECT relay_id FROM gone)
)
SELECT relay_id, pg_notify(%(channel)s, %(origin)s || ' g - ' || relay_id) FROM gone
"""
REMOTE_PRESENCE = """
SELECT p.username, p.relay_id FROM spacenb_live.presence p
JOIN spacenb_live.relays r USING (relay_id)
WHERE p.space_id = %s AND p.relay_id <> %s
  AND r.seen >= clock_timestamp() - make_interval(secs => %s)
"""
