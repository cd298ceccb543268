//! The Lua scripts that change a room in Redis. Each runs atomically on the room's shard, so
//! "assign a seq, store, publish" and "expire, remove, announce" are single steps no other node
//! can interleave with. They run through `redis::Script` (EVALSHA, falling back to loading the
//! script after a Redis restart). Payloads follow `payload.rs`; "now" is Redis server TIME so node
//! clocks never matter (Redis 5+ replicates scripts by effects, which TIME needs).

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by the scripts (prepended to each).
macro_rules! prelude {
    () => {
        r#"
-- A room's seq, epoch and log outlive its last CHAT and its last member (join, refresh) by
-- `[cluster] retention_secs` (an ARGV; 30 days when a caller leaves it out), so rooms never
-- used again do not hold Redis memory forever; a room idle for longer starts over at seq 1.
-- A room that never had a CHAT (seq 0) keeps them only as long as its presence set.
-- Every script that sets one of their expiries sets all three alike, so they go together.
local RETENTION_MS = 2592000000
-- One payload field: byte length, ':', bytes (payload.rs).
local function field(s)
  s = tostring(s)
  return #s .. ':' .. s
end
-- Decimal integer text; tostring() would switch to exponent notation past 1e14.
local function int(n)
  return string.format('%d', n)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The room's seq and epoch, starting its sequence (seq 0 in `fresh`, the log dropped) when
-- the seq key is missing. The seq key marks the sequence: an epoch key without it (left by a
-- seq key that expired or was evicted alone) is never reused, or the count would restart at 1
-- under an epoch whose higher seqs clients have seen, and they would drop the new CHATs as
-- duplicates. A seq key without an epoch gets `fresh` (the count goes on; resumes naming the
-- lost epoch are void, so truncated).
local function sequence(seq_key, epoch_key, log_key, fresh, retention)
  local seq = redis.call('GET', seq_key)
  local epoch = false
  if seq then
    epoch = redis.call('GET', epoch_key)
  else
    seq = '0'
    redis.call('DEL', log_key)
    redis.call('SET', seq_key, seq, 'PX', retention)
  end
  if not epoch then
    epoch = fresh
    redis.call('SET', epoch_key, epoch, 'PX', retention)
  end
  return seq, epoch
end
-- Removes every presence entry whose expiry is past and publishes a leave (no body) for each.
-- Inside a script this is atomic, so exactly one caller ever announces a given expiry.
local function sweep(presence, channel, now)
  local expired = redis.call('ZRANGEBYSCORE', presence, '-inf', int(now))
  for _, member in ipairs(expired) do
    redis.call('ZREM', presence, member)
    local node, session, user = string.match(member, '^([^|]*)|([^|]*)|(.*)$')
    if node then
      redis.call('PUBLISH', channel,
        field('L') .. field(node) .. field(session) .. field(user) .. field(''))
    end
  end
  return #expired
end
"#
    };
}

pub(crate) struct Scripts {
    /// KEYS: seq, log, epoch, and the dedup key when the CHAT has a `ref` to remember. ARGV:
    /// channel, max_len, node, session, id, body, retention_ms, a fresh epoch, dedup window ms.
    /// Returns `{1, seq}` for a CHAT posted, `{0, seq, body}` for a resend of one the dedup key
    /// holds (nothing written or published).
    pub publish_chat: Script,
    /// KEYS: presence, seq, epoch, log. ARGV: channel, node, session, user, ttl_ms,
    /// max_members, body, retention_ms, a fresh epoch. Starts the room's sequence (seq 0 in
    /// the fresh epoch) when its seq key is missing. Returns `{0}` when full, else
    /// `{1, seq, {member...}, epoch}`.
    pub join: Script,
    /// KEYS: presence. ARGV: channel, node, session, user, body. Returns 1 if it was present.
    pub leave: Script,
    /// KEYS: presence, seq, log, epoch. ARGV: channel, node, ttl_ms, retention_ms, then (session,
    /// user, body) per entry. Returns how many entries were missing and announced again.
    pub refresh: Script,
    /// KEYS: presence. ARGV: channel. Returns how many entries expired.
    pub sweep: Script,
    /// KEYS: presence. Returns the live members.
    pub members: Script,
    /// KEYS: a user's sessions. ARGV: entry (`<node>|<session>`), ttl_ms, max. Drops expired
    /// entries, then adds this one unless the user already has `max` live ones (an entry already
    /// there is only extended). Returns 1 when the session has its place, 0 when refused.
    pub claim_user: Script,
    /// No keys. ARGV: channel, payload. PUBLISHes and returns how many connections subscribed
    /// to the channel itself: pattern subscribers (a `PSUBSCRIBE chat:*` while debugging) also
    /// receive it but are not nodes that will answer.
    pub broadcast: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    claim_user: Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
  and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], int(now + ttl), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 3 * ttl)
return 1
"#
    )),
    broadcast: Script::new(
        r#"
local subscribed = redis.call('PUBSUB', 'NUMSUB', ARGV[1])[2]
redis.call('PUBLISH', ARGV[1], ARGV[2])
return subscribed
"#,
    ),
    publish_chat: Script::new(concat!(
        prelude!(),
        r#"
-- A resend of a CHAT this user posted with this ref within the window: its stored
-- `field(seq) .. body` answers, and nothing else happens.
if KEYS[4] then
  local prior = redis.call('GET', KEYS[4])
  if prior then
    local colon = string.find(prior, ':', 1, true)
    local len = tonumber(string.sub(prior, 1, colon - 1))
    return {0, tonumber(string.sub(prior, colon + 1, colon + len)),
      string.sub(prior, colon + len + 1)}
  end
end
-- The first CHAT after a JOIN finds the sequence the JOIN started, and keeps its epoch.
local retention = tonumber(ARGV[7]) or RETENTION_MS
local current, epoch = sequence(KEYS[1], KEYS[3], KEYS[2], ARGV[8], retention)
local seq = (tonumber(current) or 0) + 1
local s = int(seq)
-- The epoch is appended to the encoded CHAT as protobuf field 13 (`epoch`, tag 0x6a), so every
-- copy (live, gap fill, replay) carries it; epochs are 16 bytes, a one-byte length.
local body = ARGV[6] .. '\106' .. string.char(#epoch) .. epoch
-- XADD before the seq is stored: if it fails (say, a stream id out of order) no seq is burnt.
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], s .. '-1', 'b', body)
redis.call('SET', KEYS[1], s, 'PX', retention)
redis.call('SET', KEYS[3], epoch, 'PX', retention)
redis.call('PEXPIRE', KEYS[2], retention)
if KEYS[4] then
  redis.call('SET', KEYS[4], field(s) .. body, 'PX', ARGV[9])
end
redis.call('PUBLISH', ARGV[1],
  field('C') .. field(s) .. field(ARGV[3]) .. field(ARGV[4]) .. field(ARGV[5]) .. field(body))
return {1, seq}
"#
    )),
    join: Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
sweep(KEYS[1], ARGV[1], now)
local member = ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4]
local present = redis.call('ZSCORE', KEYS[1], member)
if not present and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[6]) then
  return {0}
end
redis.call('ZADD', KEYS[1], int(now + tonumber(ARGV[5])), member)
-- The set itself goes once no node refreshes it any more.
redis.call('PEXPIRE', KEYS[1], 3 * tonumber(ARGV[5]))
-- The room's sequence exists from its first JOIN, so every JOINED carries an epoch; a member
-- keeps it for the retention from now, as `refresh` does. A room that never had a CHAT has
-- nothing to keep: its keys go with its presence set, or joining fresh names would leave
-- keys behind for the whole retention.
local retention = tonumber(ARGV[8]) or RETENTION_MS
local seq, epoch = sequence(KEYS[2], KEYS[3], KEYS[4], ARGV[9], retention)
local keep = retention
if seq == '0' then
  keep = 3 * tonumber(ARGV[5])
end
redis.call('PEXPIRE', KEYS[2], keep)
redis.call('PEXPIRE', KEYS[3], keep)
redis.call('PEXPIRE', KEYS[4], keep)
-- A session joining again only extends its entry: the others saw it join already.
if not present then
  redis.call('PUBLISH', ARGV[1],
    field('J') .. field(ARGV[2]) .. field(ARGV[3]) .. field(ARGV[4]) .. field(ARGV[7]))
end
return {1, seq, redis.call('ZRANGE', KEYS[1], 0, -1), epoch}
"#
    )),
    leave: Script::new(concat!(
        prelude!(),
        r#"
local member = ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4]
if redis.call('ZREM', KEYS[1], member) == 1 then
  redis.call('PUBLISH', ARGV[1],
    field('L') .. field(ARGV[2]) .. field(ARGV[3]) .. field(ARGV[4]) .. field(ARGV[5]))
  return 1
end
return 0
"#
    )),
    refresh: Script::new(concat!(
        prelude!(),
        r#"
local expiry = int(now_ms() + tonumber(ARGV[3]))
local announced = 0
for i = 5, #ARGV - 2, 3 do
  local member = ARGV[2] .. '|' .. ARGV[i] .. '|' .. ARGV[i + 1]
  -- ZADD answers 1 for a new member: this entry was gone (swept, or Redis lost its data).
  if redis.call('ZADD', KEYS[1], expiry, member) == 1 then
    redis.call('PUBLISH', ARGV[1],
      field('J') .. field(ARGV[2]) .. field(ARGV[i]) .. field(ARGV[i + 1]) .. field(ARGV[i + 2]))
    announced = announced + 1
  end
end
redis.call('PEXPIRE', KEYS[1], 3 * tonumber(ARGV[3]))
-- A room with members keeps its seq and history however long it stays quiet: retention counts
-- from the last CHAT or the last member, whichever is later. One that never had a CHAT keeps
-- its keys as long as its presence set (see `join`).
local keep = ARGV[4]
if redis.call('GET', KEYS[2]) == '0' then
  keep = 3 * tonumber(ARGV[3])
end
redis.call('PEXPIRE', KEYS[2], keep)
redis.call('PEXPIRE', KEYS[3], keep)
redis.call('PEXPIRE', KEYS[4], keep)
return announced
"#
    )),
    sweep: Script::new(concat!(
        prelude!(),
        r#"
return sweep(KEYS[1], ARGV[1], now_ms())
"#
    )),
    members: Script::new(concat!(
        prelude!(),
        r#"
-- An entry whose expiry equals now is already expired (sweep uses the same bound).
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. int(now_ms()), '+inf')
"#
    )),
});
