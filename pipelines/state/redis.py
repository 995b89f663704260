"""The online state on a Redis 7 (or Valkey) server, for API hosts that share one state.

Semantics are the SQLite backend's: a global arrival number (`seq`, one INCR) orders the rows, a
transaction's history is the rows stored before it (lower `seq`) inside its windows, a re-sent id
is not stored again and reads with the `seq` it got the first time, and a terminal's rows carry
the label known at read time. Each /predict is one round trip: a Lua script stores the row and
returns the card's and the terminal's rows, atomically (Redis runs one script at a time).

Keys (under `key_prefix`), each expiring `retention` after its last write:
- `seq`: the arrival counter;
- `tx:<id>`: the transaction's `seq`, card, terminal, time and amount (idempotency);
- `card:<customer>` / `terminal:<terminal>`: sorted sets scored by time in ms, members
  `<seq, 16 digits>|<ts_ms>|<amount>` / `<seq>|<ts_ms>|<transaction id>`, so that members of
  one millisecond sort by arrival; rows older than the retention (in transaction time) are
  trimmed on each write;
- `label:<id>`: a received label, "0" or "1" (it may arrive before its transaction);
- `canary:<version>:<bucket start s>`: the canary guard's counters of a challenger version in
  a time bucket, a hash of `<role>|<counter>` added to by every worker (HINCRBY), expiring
  `keep_s` after the bucket's last write; `canary-stop:<version>`: the version's stop record
  (JSON, SET NX: the first writer wins; no expiry, it is one small key per version).

The script derives label and transaction keys from what it reads, so it needs one Redis server
(or a primary with replicas / Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from typing import Any

import numpy as np
import pandas as pd
import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError, RedisError
from redis.retry import Retry

from pipelines.settings import Settings
from pipelines.state.protocol import (
    DAY_MS,
    LABEL_COLUMNS,
    CanaryWindow,
    History,
    RoleCounts,
    StateUnavailable,
    stop_record_from_text,
)

log = logging.getLogger(__name__)

SEQ_DIGITS = 16
WARM_BATCH = 1000

# KEYS: 1 tx key, 2 card set, 3 terminal set, 4 seq counter
# ARGV: 1 transaction id, 2 customer, 3 terminal, 4 ts_ms, 5 amount (as Python wrote it),
#       6 card window start (excluded), 7 terminal window start (excluded),
#       8 terminal window end (included), 9 trim rows before this time, 10 ttl s,
#       11 key prefix
# returns {already seen 0/1, card members, terminal members, terminal labels ("" unknown)}
OBSERVE = """
local seq = redis.call('HGET', KEYS[1], 's')
local seen = 1
if not seq then
  seen = 0
  seq = string.format('%016d', redis.call('INCR', KEYS[4]))
  redis.call('HSET', KEYS[1], 's', seq, 'c', ARGV[2], 'm', ARGV[3], 't', ARGV[4], 'a', ARGV[5])
  redis.call('ZADD', KEYS[2], ARGV[4], seq .. '|' .. ARGV[4] .. '|' .. ARGV[5])
  redis.call('ZADD', KEYS[3], ARGV[4], seq .. '|' .. ARGV[4] .. '|' .. ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[9])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[9])
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[10]) end
end
local function before(members)
  local out = {}
  for _, member in ipairs(members) do
    if string.sub(member, 1, 16) < seq then out[#out + 1] = member end
  end
  return out
end
local card = before(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[6], ARGV[4]))
local terminal = before(redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[7], ARGV[8]))
local labels = {}
local label_prefix = ARGV[11] .. 'label:'
for start = 1, #terminal, 500 do
  local keys = {}
  for i = start, math.min(start + 499, #terminal) do
    local member = terminal[i]
    local cut = string.find(member, '|', 18, true)
    keys[#keys + 1] = label_prefix .. string.sub(member, cut + 1)
  end
  for _, label in ipairs(redis.call('MGET', unpack(keys))) do
    labels[#labels + 1] = label or ''
  end
end
return {seen, card, terminal, labels}
"""

# warm: many rows per call. KEYS: 1 seq counter. ARGV: 1 key prefix, 2 ttl s, 3 retention ms,
# then 5 per row: transaction id, customer, terminal, ts_ms, amount. Returns rows added.
WARM = """
local p, ttl, keep = ARGV[1], ARGV[2], tonumber(ARGV[3])
local added = 0
for i = 4, #ARGV, 5 do
  local tid, ts, amount = ARGV[i], ARGV[i + 3], ARGV[i + 4]
  local tx = p .. 'tx:' .. tid
  if redis.call('EXISTS', tx) == 0 then
    local seq = string.format('%016d', redis.call('INCR', KEYS[1]))
    local card, terminal = p .. 'card:' .. ARGV[i + 1], p .. 'terminal:' .. ARGV[i + 2]
    local trim = '(' .. string.format('%d', tonumber(ts) - keep)
    redis.call('HSET', tx, 's', seq, 'c', ARGV[i + 1], 'm', ARGV[i + 2], 't', ts, 'a', amount)
    redis.call('ZADD', card, ts, seq .. '|' .. ts .. '|' .. amount)
    redis.call('ZADD', terminal, ts, seq .. '|' .. ts .. '|' .. tid)
    redis.call('ZREMRANGEBYSCORE', card, '-inf', trim)
    redis.call('ZREMRANGEBYSCORE', terminal, '-inf', trim)
    redis.call('EXPIRE', tx, ttl)
    redis.call('EXPIRE', card, ttl)
    redis.call('EXPIRE', terminal, ttl)
    added = added + 1
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
return added
"""


def unavailable_reason(error: RedisError) -> str:
    """What a client may be told of a Redis failure: its kind, never hosts or credentials."""
    if isinstance(error, BusyLoadingError):
        return "Redis is loading its data set"
    if isinstance(error, redis.TimeoutError):
        return "Redis did not answer in time"
    if isinstance(error, redis.ConnectionError):
        return "no connection to Redis"
    if isinstance(error, ReadOnlyError):
        return "Redis is a read-only replica"
    words = str(error).split()
    if words and words[0].isupper():  # Redis's error codes: OOM, MISCONF, LOADING, ...
        return f"Redis refused the command ({words[0]})"
    return f"Redis failed ({type(error).__name__})"


@contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        log.warning("online state: %s failed: %r", what, exc)
        raise StateUnavailable(f"online state unavailable: {unavailable_reason(exc)}") from exc


class RedisOnlineState:
    """Redis implementation; one client (a connection pool) per process, safe across threads.

    Nothing connects at construction: an API starts while Redis is down and serves once it is
    back. A broken connection is retried once (the script is idempotent by transaction id), and
    a script a restarted Redis forgot is loaded again (EVALSHA, then SCRIPT LOAD)."""

    def __init__(
        self,
        url: str,
        customer_window_days: int,
        terminal_span_days: int,
        terminal_delay_days: int,
        retention_days: int,
        key_prefix: str = "fraudflow:",
        socket_timeout_s: float = 0.5,
        connect_timeout_s: float = 0.5,
    ) -> None:
        self.customer_window_ms = customer_window_days * DAY_MS
        self.terminal_span_ms = terminal_span_days * DAY_MS
        self.terminal_delay_ms = terminal_delay_days * DAY_MS
        self.retention_ms = retention_days * DAY_MS
        self.ttl_s = retention_days * 86_400
        self.prefix = key_prefix
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self._observe = self.client.register_script(OBSERVE)
        self._warm = self.client.register_script(WARM)

    def _keys(self, transaction_id: str, customer_id: str, terminal_id: str) -> list[str]:
        p = self.prefix
        return [f"{p}tx:{transaction_id}", f"{p}card:{customer_id}", f"{p}terminal:{terminal_id}"]

    def _args(
        self, transaction_id: str, customer_id: str, terminal_id: str, ts_ms: int, amount: float
    ) -> list[str | int]:
        return [
            transaction_id,
            customer_id,
            terminal_id,
            ts_ms,
            repr(float(amount)),  # Lua never converts it: the amount reads back bit for bit
            ts_ms - self.customer_window_ms,
            ts_ms - self.terminal_span_ms,
            ts_ms - self.terminal_delay_ms,
            ts_ms - self.retention_ms,
            self.ttl_s,
            self.prefix,
        ]

    def observe(
        self, transaction_id: str, customer_id: str, terminal_id: str, ts_ms: int, amount: float
    ) -> History:
        """Store a transaction (once) and return the rows stored before it: one round trip."""
        keys = self._keys(transaction_id, customer_id, terminal_id) + [f"{self.prefix}seq"]
        args = self._args(transaction_id, customer_id, terminal_id, ts_ms, amount)
        with _redis_errors("observe"):
            seen, card, terminal, labels = self._observe(keys=keys, args=args)
        card_times, card_amounts = [], []
        for member in card:
            _, ts, value = member.split(b"|", 2)
            card_times.append(int(ts))
            card_amounts.append(float(value))
        terminal_times = [int(member.split(b"|", 2)[1]) for member in terminal]
        terminal_labels = [int(label) if label else None for label in labels]
        return History(
            tuple(card_times),
            tuple(card_amounts),
            tuple(terminal_times),
            tuple(terminal_labels),
            bool(seen),
        )

    def add_labels(self, labels: list[tuple[str, int]], received_ms: int) -> int:
        """Record late fraud labels (a corrected label replaces the old one); returns how many
        belong to transactions the state knows. The labels are written in one transaction."""
        with _redis_errors("add_labels"):
            pipe = self.client.pipeline(transaction=True)
            for transaction_id, label in labels:
                pipe.set(f"{self.prefix}label:{transaction_id}", int(label), ex=self.ttl_s)
            for transaction_id, _ in labels:
                pipe.exists(f"{self.prefix}tx:{transaction_id}")
            replies = pipe.execute()
        return int(sum(replies[len(labels) :]))

    def warm(self, transactions: pd.DataFrame) -> int:
        """Load historical raw transactions (and their labels, if any) in batches of
        `WARM_BATCH` rows per script call, in the frame's order; returns rows added."""
        times = transactions["tx_datetime"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
        rows = zip(
            transactions["transaction_id"].astype(str),
            transactions["customer_id"].astype(str),
            transactions["terminal_id"].astype(str),
            times.tolist(),
            transactions["tx_amount"].astype(float).tolist(),
        )
        labels: list[tuple[str, int]] = []
        if "tx_fraud" in transactions:
            labelled = transactions.dropna(subset=["tx_fraud"])
            labels = list(
                zip(labelled["transaction_id"].astype(str), labelled["tx_fraud"].astype(int))
            )
        added = 0
        head = [self.prefix, self.ttl_s, self.retention_ms]
        with _redis_errors("warm"):
            for start in range(0, len(labels), WARM_BATCH):
                pipe = self.client.pipeline(transaction=False)
                for transaction_id, label in labels[start : start + WARM_BATCH]:
                    pipe.set(f"{self.prefix}label:{transaction_id}", label, ex=self.ttl_s)
                pipe.execute()
            batch: list[str | int] = []
            for transaction_id, customer_id, terminal_id, ts_ms, amount in rows:
                batch += [transaction_id, customer_id, terminal_id, ts_ms, repr(amount)]
                if len(batch) >= 5 * WARM_BATCH:
                    added += self._warm(keys=[f"{self.prefix}seq"], args=head + batch)
                    batch = []
            if batch:
                added += self._warm(keys=[f"{self.prefix}seq"], args=head + batch)
        return added

    def labels(self) -> pd.DataFrame:
        """Every label received and not yet expired (`transaction_id`, `tx_fraud`)."""
        pattern = f"{self.prefix}label:*"
        skip = len(self.prefix) + len("label:")
        ids: list[str] = []
        values: list[int] = []
        with _redis_errors("labels"):
            batch: list[bytes] = []
            for key in self.client.scan_iter(match=pattern, count=5000):
                batch.append(key)
                if len(batch) >= WARM_BATCH:
                    self._read_labels(batch, skip, ids, values)
                    batch = []
            self._read_labels(batch, skip, ids, values)
        return pd.DataFrame({"transaction_id": ids, "tx_fraud": values}, columns=LABEL_COLUMNS)

    def _read_labels(self, keys: list[bytes], skip: int, ids: list[str], values: list[int]) -> None:
        if not keys:
            return
        for key, value in zip(keys, self.client.mget(keys)):
            if value is not None:  # expired between SCAN and MGET
                ids.append(key[skip:].decode())
                values.append(int(value))

    def add_canary_counts(
        self, version: str, bucket_s: int, counts: Mapping[str, RoleCounts], keep_s: int
    ) -> None:
        """Add a worker's counts to a bucket (one hash) and let the bucket expire `keep_s`
        after this write: one round trip (MULTI/EXEC)."""
        key = f"{self.prefix}canary:{version}:{int(bucket_s)}"
        with _redis_errors("add_canary_counts"):
            pipe = self.client.pipeline(transaction=True)
            for role, figures in counts.items():
                for counter, count in figures.counters().items():
                    pipe.hincrby(key, f"{role}|{counter}", count)
            pipe.expire(key, max(1, int(keep_s)))
            pipe.execute()

    def canary_window(self, version: str, bucket_starts: Sequence[int]) -> CanaryWindow:
        """Each role's counts summed over the given buckets, and the version's stop record:
        one round trip (a pipeline of HGETALLs and a GET)."""
        with _redis_errors("canary_window"):
            pipe = self.client.pipeline(transaction=False)
            for start in bucket_starts:
                pipe.hgetall(f"{self.prefix}canary:{version}:{int(start)}")
            pipe.get(f"{self.prefix}canary-stop:{version}")
            *buckets, stop = pipe.execute()
        counters: dict[str, dict[str, int]] = {}
        for bucket in buckets:
            for name, count in bucket.items():
                role, _, counter = name.decode().partition("|")
                role_counters = counters.setdefault(role, {})
                role_counters[counter] = role_counters.get(counter, 0) + int(count)
        return CanaryWindow(
            {role: RoleCounts.from_counters(values) for role, values in counters.items()},
            None if stop is None else stop_record_from_text(version, stop),
        )

    def record_canary_stop(self, version: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Write the version's stop record unless one is there (SET NX) and read the one that
        stands: one round trip (MULTI/EXEC)."""
        key = f"{self.prefix}canary-stop:{version}"
        with _redis_errors("record_canary_stop"):
            pipe = self.client.pipeline(transaction=True)
            pipe.set(key, json.dumps(dict(record), sort_keys=True), nx=True)
            pipe.get(key)
            _, standing = pipe.execute()
        return stop_record_from_text(version, standing)

    def check(self) -> None:
        """Raise StateUnavailable unless Redis answers and is not loading."""
        with _redis_errors("ping"):
            self.client.ping()

    def size_bytes(self) -> float | None:
        """Bytes of Redis's data set (INFO memory, `used_memory_dataset`: the server's whole
        memory for this database's keys); None while Redis cannot be reached."""
        try:
            return float(self.client.info("memory")["used_memory_dataset"])
        except (redis.RedisError, KeyError):
            return None

    def close(self) -> None:
        self.client.close()


def open_redis_state(settings: Settings, retention_days: int) -> RedisOnlineState:
    """The Redis state of `settings.state`, with the feature settings' window spans."""
    features = settings.features
    config = settings.state
    return RedisOnlineState(
        str(config.url),  # the settings refuse backend redis without a URL
        customer_window_days=features.customer_history_days,
        terminal_span_days=features.terminal_history_days,
        terminal_delay_days=features.label_delay_days,
        retention_days=retention_days,
        key_prefix=config.key_prefix,
        socket_timeout_s=config.socket_timeout_s,
        connect_timeout_s=config.connect_timeout_s,
    )


def redis_labels(settings: Settings, retention_days: int) -> pd.DataFrame:
    """The labels held by the Redis state of the settings."""
    with closing(open_redis_state(settings, retention_days)) as state:
        return state.labels()
