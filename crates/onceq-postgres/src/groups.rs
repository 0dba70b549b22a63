//! Consumer groups (docs/semantics.md, "Consumer groups"; Invariants 10 and 11) in the database,
//! so that members joined through any server sharing the schema form one group.
//!
//! A group is one row of `groups`: its whole [`GroupState`] as JSON. Every decision (who is a
//! member, who should own which partition, when a partition is handed over) is the pure state
//! machine of `onceq_core::group`; this module only keeps the row and runs the operations under
//! its row lock, each in one transaction:
//!
//! 1. apply the queue's due transitions (expired leases end), which also reads the clock: the
//!    operation's one "now";
//! 2. `SELECT state ... FOR UPDATE` (a join inserts the row first if it is missing, with
//!    `ON CONFLICT DO NOTHING`, so two first joins through two servers make one row);
//! 3. `refresh` (fit the partitions, remove expired members), the operation, then `hand_over`
//!    with `busy`: which of the partitions in transition hold a `LEASED` job whose
//!    `lease_expires_at` is after "now";
//! 4. write the state back and commit.
//!
//! A join also locks its queue's row (`FOR NO KEY UPDATE`) first, so that two joins to two
//! different groups of one queue cannot both see the other group empty (only one group at a
//! time has members on a queue); enqueues hold the queue row `FOR KEY SHARE`, which that lock
//! does not wait for. Locks are always taken queue row first, then group row, so joins cannot
//! deadlock on each other.
//!
//! # A lease cannot race a hand-over (Invariant 10)
//!
//! A partition changes owner only in a transaction holding the group row `FOR UPDATE` that saw
//! no live lease in it. A group lease runs in one transaction that takes the group row
//! `FOR SHARE`, checks that the member is one and which partitions it may lease from, leases
//! with `partition = ANY(...)` and commits. The two row locks conflict, so the two transactions
//! are serialized:
//!
//! - lease first: the hand-over's `FOR UPDATE` waits for the lease to commit; its `busy` query
//!   is a later statement, and under READ COMMITTED each statement reads the data committed
//!   before it starts, so it sees the new lease and keeps the partition with its owner;
//! - hand-over first: the lease's `FOR SHARE` waits for the hand-over to commit, then reads
//!   the row as the hand-over wrote it (READ COMMITTED re-reads a row it waited for), so the
//!   old owner finds the partition no longer leasable and leases nothing from it.
//!
//! So no lease is granted in a partition whose ownership is being decided, and ownership is
//! never decided while a lease in the partition is being granted. Leases share the row lock
//! with each other, so members lease concurrently; heartbeats, joins and leaves wait for the
//! leases in progress (one statement each) and vice versa.
//!
//! A lease only reads the state under `FOR SHARE`; it must not act on a state that a refresh
//! would change. When the stored state has a member whose session expired, a partition count
//! that no longer fits the queue, or a partition in transition that holds no live lease any
//! more (so a hand-over is due), the lease instead runs the whole refresh and hand-over under
//! `FOR UPDATE`, writes the state back, and leases in that same transaction. A partition in
//! transition whose old owner still holds a live lease in it does not force that: while the
//! `FOR SHARE` lock is held no hand-over can run, so the stored state is what one would find,
//! and the members' leases go on side by side during a long hand-over.
//!
//! # Reading a member's partitions
//!
//! A member's lease reads each partition it owns along `jobs_ready_partition` (the ready jobs of
//! `per_key` queues by partition, in lease order), at most the lease size from each, and locks
//! the first of those in lease order (see [`restricted`]); its cost does not grow with the ready
//! jobs of the partitions other members own.
//!
//! # Time
//!
//! An operation's "now" is the one its first statement read (see the crate docs, "Time"),
//! before it waited for the group row. A member's session is judged by it, so a member whose
//! session ends while its operation waits for the lock is still a member for that operation;
//! that is harmless to Invariant 10, which rests on the row lock and on `busy`, never on time.
//!
//! # Long polls
//!
//! A group lease with `wait_ms` waits as `job_lease` does (`LISTEN/NOTIFY` and timers, see
//! `wait`), and each time it wakes it runs the whole transaction above again: membership and
//! ownership are checked afresh on every look, so a member that expired while it waited gets
//! `NotMember`, and a partition handed to it while it waited is leased from. It wakes when jobs
//! of the queue become ready (in any partition), when the queue's next lease expires, and at
//! least every few seconds (`wait`); an ack that ends the old owner's last lease in a partition
//! handed to it sends no wake-up, so a member waiting for a hand-over with nothing else
//! happening in the queue finds the partition at one of those later looks, or at its next
//! heartbeat.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use onceq_core::group::{
    self, Changes, GroupInfo, GroupName, GroupState, JoinOptions, MemberId, MemberView, PartitionLoad,
};
use onceq_core::store::validate;
use onceq_core::{Error, QueueName, Result, Timestamp};
use sqlx::{Connection, PgConnection, Row};

use crate::due::{decode, QueueRow, Scope};
use crate::jobs::GroupLeaseSql;
use crate::{parse_config, PgStore};

/// Locks a queue's row for a join (see the module docs); returns its config as it is now.
const QUEUE_LOCK: &str = "SELECT config::text FROM {s}.queues WHERE id = $1 FOR NO KEY UPDATE";
/// The other groups of queue `$1` than `$2`, for the one-group check of a join.
const OTHER_GROUPS: &str = "SELECT name, state::text FROM {s}.groups WHERE queue_id = $1 AND name <> $2";
/// Creates group `$2` of queue `$1` with state `$3` unless it exists.
const GROUP_CREATE: &str =
    "INSERT INTO {s}.groups (queue_id, name, state) VALUES ($1, $2, $3::jsonb) ON CONFLICT (queue_id, name) DO NOTHING";
/// Reads a group's state and locks its row for a change.
const GROUP_LOCK: &str = "SELECT state::text FROM {s}.groups WHERE queue_id = $1 AND name = $2 FOR UPDATE";
/// Reads a group's state and locks its row against changes, for a lease.
const GROUP_SHARE: &str = "SELECT state::text FROM {s}.groups WHERE queue_id = $1 AND name = $2 FOR SHARE";
/// Reads a group's state without a lock.
const GROUP_READ: &str = "SELECT state::text FROM {s}.groups WHERE queue_id = $1 AND name = $2";
/// Writes a group's state.
const GROUP_WRITE: &str = "UPDATE {s}.groups SET state = $3::jsonb WHERE queue_id = $1 AND name = $2";
/// A queue's groups, by name (byte order, as `GroupName` sorts).
const GROUPS_LIST: &str = r#"SELECT name FROM {s}.groups WHERE queue_id = $1 ORDER BY name COLLATE "C""#;
/// Which of partitions `$3` of queue `$1` hold a live lease at `$2`.
const BUSY: &str = "SELECT DISTINCT partition FROM {s}.jobs \
                    WHERE queue_id = $1 AND state = 2 AND lease_expires_at > $2 AND partition = ANY ($3::int4[])";
/// Each partition's load of queue `$1`: jobs not done, ready jobs, the oldest ready `run_at`.
const LOAD: &str = r#"
SELECT partition, count(*) AS lag, count(*) FILTER (WHERE state = 1) AS ready,
       min(run_at) FILTER (WHERE state = 1) AS oldest_ready
FROM {s}.jobs
WHERE queue_id = $1 AND state IN (0, 1, 2, 4) AND partition IS NOT NULL
GROUP BY partition
"#;

/// What a change to a group does, under its row lock.
#[derive(Debug, Clone, Copy)]
enum Change<'a> {
    Join(&'a JoinOptions),
    Heartbeat(&'a MemberId),
    Leave(&'a MemberId),
}

fn parse_state(group: &str, text: &str) -> Result<GroupState> {
    serde_json::from_str(text).map_err(|e| Error::Storage(format!("group {group} has an unreadable state: {e}")))
}

fn state_text(state: &GroupState) -> Result<String> {
    serde_json::to_string(state).map_err(|e| Error::Storage(format!("writing a group's state: {e}")))
}

/// `a` and then `b`.
fn merged(a: Changes, b: Changes) -> Changes {
    Changes {
        rebalances: a.rebalances + b.rebalances,
        moved: a.moved + b.moved,
        idle_ms: [a.idle_ms, b.idle_ms].concat(),
        expired: a.expired + b.expired,
    }
}

fn partitions_param(partitions: &[u32]) -> Vec<i32> {
    partitions.iter().map(|&p| i32::try_from(p).unwrap_or(i32::MAX)).collect()
}

/// Which of `state`'s partitions in transition hold a live lease at `now`.
async fn busy(
    conn: &mut PgConnection,
    sql: &str,
    queue_id: i64,
    state: &GroupState,
    now: i64,
) -> std::result::Result<BTreeSet<u32>, sqlx::Error> {
    let moving = state.in_transition();
    if moving.is_empty() {
        return Ok(BTreeSet::new());
    }
    let rows: Vec<i32> =
        sqlx::query_scalar(sql).bind(queue_id).bind(now).bind(partitions_param(&moving)).fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().filter_map(|p| u32::try_from(p).ok()).collect())
}

/// Invariant 10 after a hand-over: a partition whose owner is not the member it should go to
/// still holds a live lease of its owner (else it would have been handed over).
fn handed_over(state: &GroupState, busy: &BTreeSet<u32>) -> bool {
    (0u32..).zip(&state.partitions).all(|(p, part)| part.owner == part.target || busy.contains(&p))
}

/// Brings `state` up to `now` under its row lock: refresh, then hand over what no live lease
/// holds.
async fn settle(
    conn: &mut PgConnection,
    busy_sql: &str,
    queue: &QueueRow,
    state: &mut GroupState,
    now: i64,
) -> std::result::Result<Changes, sqlx::Error> {
    let at = Timestamp::from_millis(now);
    let refreshed = state.refresh(queue.config.partitions, at);
    let busy = busy(conn, busy_sql, queue.id, state, now).await?;
    let handed = state.hand_over(&busy, at);
    debug_assert!(handed_over(state, &busy), "a partition not handed over holds no live lease");
    Ok(merged(refreshed, handed))
}

impl PgStore {
    /// The queue of a group operation, its due transitions applied; `QueueNotFound` if missing.
    async fn group_queue(&self, queue: &QueueName) -> Result<(i64, QueueRow)> {
        let (now, found) = self.apply_due(Scope::Queue(queue)).await?.queue();
        let q = found.ok_or_else(|| Error::QueueNotFound(queue.clone()))?;
        Ok((now, q))
    }

    pub(crate) async fn group_join(
        &self,
        queue: &QueueName,
        group: &GroupName,
        options: &JoinOptions,
    ) -> Result<MemberView> {
        let view = self.group_change(queue, group, Change::Join(options)).await?;
        view.ok_or_else(|| Error::Storage("a join returned no view".into()))
    }

    pub(crate) async fn group_heartbeat(
        &self,
        queue: &QueueName,
        group: &GroupName,
        member: &MemberId,
    ) -> Result<MemberView> {
        let view = self.group_change(queue, group, Change::Heartbeat(member)).await?;
        view.ok_or_else(|| Error::Storage("a heartbeat returned no view".into()))
    }

    pub(crate) async fn group_leave(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<()> {
        self.group_change(queue, group, Change::Leave(member)).await.map(drop)
    }

    /// Runs `change` on the group in one transaction (see the module docs); the member's view
    /// for a join or a heartbeat.
    async fn group_change(
        &self,
        queue: &QueueName,
        group: &GroupName,
        change: Change<'_>,
    ) -> Result<Option<MemberView>> {
        let (now, q) = self.group_queue(queue).await?;
        validate::grouped(queue, &q.config)?;
        let (queue_lock, others, create, lock, write, busy_sql) = (
            self.sql(QUEUE_LOCK),
            self.sql(OTHER_GROUPS),
            self.sql(GROUP_CREATE),
            self.sql(GROUP_LOCK),
            self.sql(GROUP_WRITE),
            self.sql(BUSY),
        );
        let empty = state_text(&GroupState::default())?;
        let at = Timestamp::from_millis(now);
        let outcome = self
            .run("changing a consumer group", || async {
                let mut conn = self.acquire_conn().await?;
                let mut tx = conn.begin().await?;
                let mut q = q.clone();
                if let Change::Join(_) = change {
                    let config: Option<String> =
                        sqlx::query_scalar(&queue_lock).bind(q.id).fetch_optional(&mut *tx).await?;
                    let Some(config) = config else { return Ok(Err(Error::QueueNotFound(queue.clone()))) };
                    // The config as it is under the lock: a reshape may have committed since.
                    match parse_config(queue.as_str(), &config) {
                        Ok(config) => q.config = config,
                        Err(error) => return Ok(Err(error)),
                    }
                    if let Err(error) = validate::grouped(queue, &q.config) {
                        return Ok(Err(error));
                    }
                    let rows = sqlx::query(&others).bind(q.id).bind(group.as_str()).fetch_all(&mut *tx).await?;
                    let mut live = None;
                    for row in rows {
                        let name: String = row.try_get("name")?;
                        let text: String = row.try_get("state")?;
                        let mut other = match parse_state(&name, &text) {
                            Ok(state) => state,
                            Err(error) => return Ok(Err(error)),
                        };
                        other.expire(at);
                        if !other.is_empty() {
                            live = GroupName::new(name).ok();
                            break;
                        }
                    }
                    if let Err(error) = validate::one_group(queue, group, live.as_ref()) {
                        return Ok(Err(error));
                    }
                    sqlx::query(&create).bind(q.id).bind(group.as_str()).bind(&empty).execute(&mut *tx).await?;
                }
                let text: Option<String> =
                    sqlx::query_scalar(&lock).bind(q.id).bind(group.as_str()).fetch_optional(&mut *tx).await?;
                let member = match change {
                    Change::Heartbeat(m) | Change::Leave(m) => Some(m),
                    Change::Join(_) => None,
                };
                let Some(text) = text else {
                    // A group never joined has no members (a join created the row above).
                    return Ok(Err(match member {
                        Some(member) => group::not_member(member),
                        None => Error::Storage(format!("group {group} vanished while a member joined")),
                    }));
                };
                let mut state = match parse_state(group.as_str(), &text) {
                    Ok(state) => state,
                    Err(error) => return Ok(Err(error)),
                };
                let refreshed = state.refresh(q.config.partitions, at);
                // The change itself; an error (NotMember) still commits the refresh.
                let (result, changed) = match change {
                    Change::Join(options) => {
                        let (id, changes) = state.join(options, at);
                        (Ok(Some(id)), changes)
                    }
                    Change::Heartbeat(m) => (state.heartbeat(m, at).map(|()| Some(m.clone())), Changes::default()),
                    Change::Leave(m) => match state.leave(m, at) {
                        Ok(changes) => (Ok(None), changes),
                        Err(error) => (Err(error), Changes::default()),
                    },
                };
                let busy = busy(&mut tx, &busy_sql, q.id, &state, now).await?;
                let handed = state.hand_over(&busy, at);
                debug_assert!(handed_over(&state, &busy), "a partition not handed over holds no live lease");
                let view = match result {
                    Ok(Some(id)) => state.view(&id).map(Some),
                    Ok(None) => Ok(None),
                    Err(error) => Err(error),
                };
                let text = match state_text(&state) {
                    Ok(text) => text,
                    Err(error) => return Ok(Err(error)),
                };
                sqlx::query(&write).bind(q.id).bind(group.as_str()).bind(&text).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(Ok((view, merged(merged(refreshed, changed), handed))))
            })
            .await?;
        let (view, changes) = outcome?;
        group::record(&changes, queue.as_str(), group.as_str());
        view
    }

    /// The group's state as it would be after a refresh and hand-over at `now`, without writing
    /// it (a read): a group never created reads as empty.
    async fn group_read(&self, conn: &mut PgConnection, q: &QueueRow, group: &str, now: i64) -> Result<GroupState> {
        let (read, busy_sql) = (self.sql(GROUP_READ), self.sql(BUSY));
        let text: Option<String> = sqlx::query_scalar(&read)
            .bind(q.id)
            .bind(group)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| crate::error::map(&self.inner.target, "reading a consumer group", e))?;
        let mut state = match text {
            Some(text) => parse_state(group, &text)?,
            None => GroupState::default(),
        };
        settle(conn, &busy_sql, q, &mut state, now)
            .await
            .map_err(|e| crate::error::map(&self.inner.target, "reading a consumer group", e))?;
        Ok(state)
    }

    /// Each partition's load of queue `queue_id`.
    async fn group_load(&self, conn: &mut PgConnection, queue_id: i64) -> Result<BTreeMap<u32, PartitionLoad>> {
        let rows = sqlx::query(&self.sql(LOAD))
            .bind(queue_id)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| crate::error::map(&self.inner.target, "reading the load of a queue's partitions", e))?;
        let mut load = BTreeMap::new();
        for row in rows {
            let partition: i32 = row.try_get("partition").map_err(decode)?;
            let lag: i64 = row.try_get("lag").map_err(decode)?;
            let ready: i64 = row.try_get("ready").map_err(decode)?;
            let oldest: Option<i64> = row.try_get("oldest_ready").map_err(decode)?;
            load.insert(
                u32::try_from(partition).unwrap_or(0),
                PartitionLoad {
                    lag: lag.unsigned_abs(),
                    ready: ready.unsigned_abs(),
                    oldest_ready: oldest.map(Timestamp::from_millis),
                },
            );
        }
        Ok(load)
    }

    pub(crate) async fn group_get(&self, queue: &QueueName, group: &GroupName) -> Result<GroupInfo> {
        let (now, q) = self.group_queue(queue).await?;
        let mut conn = self
            .acquire_conn()
            .await
            .map_err(|e| crate::error::map(&self.inner.target, "reading a consumer group", e))?;
        let state = self.group_read(&mut conn, &q, group.as_str(), now).await?;
        let load = self.group_load(&mut conn, q.id).await?;
        Ok(state.info(group, &load, Timestamp::from_millis(now)))
    }

    pub(crate) async fn group_list(&self, queue: &QueueName) -> Result<Vec<GroupInfo>> {
        let (now, q) = self.group_queue(queue).await?;
        let mut conn = self
            .acquire_conn()
            .await
            .map_err(|e| crate::error::map(&self.inner.target, "listing consumer groups", e))?;
        let names: Vec<String> = sqlx::query_scalar(&self.sql(GROUPS_LIST))
            .bind(q.id)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| crate::error::map(&self.inner.target, "listing consumer groups", e))?;
        let load = self.group_load(&mut conn, q.id).await?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let group = GroupName::new(name.as_str())
                .map_err(|e| Error::Storage(format!("queue {queue} has a group with an invalid name: {e}")))?;
            let state = self.group_read(&mut conn, &q, &name, now).await?;
            out.push(state.info(&group, &load, Timestamp::from_millis(now)));
        }
        Ok(out)
    }

    /// The text of a group lease of up to `max_jobs` jobs: a hot statement, kept once filled in,
    /// except for `at_most_once` queues (whose lease deletes; rarely grouped).
    pub(crate) fn group_lease_sql(&self, max_jobs: u32, at_most_once: bool) -> Arc<str> {
        if at_most_once {
            // `LEASE_AND_DELETE` has no tokens nor expiry: its partitions are `$3`.
            Arc::from(self.sql(&restricted(&crate::jobs::lease_template(max_jobs, true), max_jobs, 3)))
        } else {
            self.hot_sql(crate::sql::HotStatement::GroupLease { max_jobs })
        }
    }

    /// One look of a group lease, in one transaction (see the module docs, "A lease cannot race
    /// a hand-over"): checks the member and its partitions under the group row's lock, then runs
    /// `lease` restricted to them. Returns the leased rows.
    pub(crate) async fn group_lease_rows(
        &self,
        q: &QueueRow,
        group: &GroupName,
        member: &MemberId,
        now: i64,
        lease: GroupLeaseSql<'_>,
    ) -> Result<Vec<sqlx::postgres::PgRow>> {
        let (share, lock, write, busy_sql) =
            (self.sql(GROUP_SHARE), self.sql(GROUP_LOCK), self.sql(GROUP_WRITE), self.sql(BUSY));
        let at = Timestamp::from_millis(now);
        let outcome = self
            .run("leasing for a consumer group member", || async {
                let mut conn = self.acquire_conn().await?;
                // First under FOR SHARE; under FOR UPDATE when the state needs a refresh.
                for exclusive in [false, true] {
                    let mut tx = conn.begin().await?;
                    let select = if exclusive { &lock } else { &share };
                    let text: Option<String> =
                        sqlx::query_scalar(select).bind(q.id).bind(group.as_str()).fetch_optional(&mut *tx).await?;
                    let Some(text) = text else { return Ok(Err(group::not_member(member))) };
                    let mut state = match parse_state(group.as_str(), &text) {
                        Ok(state) => state,
                        Err(error) => return Ok(Err(error)),
                    };
                    let mut changes = Changes::default();
                    if exclusive {
                        changes = settle(&mut tx, &busy_sql, q, &mut state, now).await?;
                        let text = match state_text(&state) {
                            Ok(text) => text,
                            Err(error) => return Ok(Err(error)),
                        };
                        sqlx::query(&write).bind(q.id).bind(group.as_str()).bind(&text).execute(&mut *tx).await?;
                    } else {
                        // Would the refresh and hand-over a change runs now change anything? No
                        // hand-over can run while this lock is held, so `busy` stays true.
                        let mut probe = state.clone();
                        let stale = if probe.refresh(q.config.partitions, at) != Changes::default() {
                            true
                        } else if probe.in_transition().is_empty() {
                            false
                        } else {
                            let busy = busy(&mut tx, &busy_sql, q.id, &probe, now).await?;
                            probe.hand_over(&busy, at);
                            probe != state
                        };
                        if stale {
                            tx.rollback().await?;
                            continue;
                        }
                    }
                    let partitions = match state.view(member) {
                        Ok(view) => view.partitions,
                        Err(error) => {
                            // The refresh (if any) is kept: it is the group's state as of now.
                            tx.commit().await?;
                            return Ok(Err(error));
                        }
                    };
                    // A limited queue's group lease passes its limits like any lease, under the
                    // queue's flow lock in this transaction (module `flow`).
                    let mut granted = None;
                    let mut limited_sql = None;
                    let mut picked_ids: Option<Vec<i64>> = None;
                    if q.config.lease_limited() && !partitions.is_empty() {
                        let flow_sql = crate::flow::FlowSql::new(|t| self.sql(t));
                        let g = crate::flow::grant(&mut tx, &flow_sql, &q.name, q.id, &q.config, now, lease.max_jobs)
                            .await?;
                        if g.grant.jobs == 0 {
                            tx.commit().await?;
                            return Ok(Ok((Vec::new(), changes)));
                        }
                        let at_most_once = q.config.delivery == onceq_core::DeliveryMode::AtMostOnce;
                        if q.config.keyed_limits() {
                            // Per-key limits pick from the member's partitions; the lease takes
                            // the picked ids (module `flow`).
                            let members = Some(partitions_param(&partitions));
                            let (ids, _) = crate::flow::key_pick(
                                &mut tx,
                                &flow_sql,
                                &q.name,
                                q.id,
                                &q.config,
                                now,
                                g.grant.jobs,
                                members,
                            )
                            .await?;
                            if ids.is_empty() {
                                tx.commit().await?;
                                return Ok(Ok((Vec::new(), changes)));
                            }
                            let n = u32::try_from(ids.len()).unwrap_or(u32::MAX);
                            let param = if at_most_once { 3 } else { 5 };
                            let template = crate::jobs::lease_template(n, at_most_once);
                            limited_sql = Some(Arc::from(self.sql(&crate::flow::by_ids(&template, param))));
                            picked_ids = Some(ids);
                        } else {
                            limited_sql = Some(self.group_lease_sql(g.grant.jobs, at_most_once));
                        }
                        granted = Some((g, flow_sql));
                    }
                    let rows = if partitions.is_empty() {
                        Vec::new()
                    } else {
                        let query = sqlx::query(limited_sql.as_deref().unwrap_or(lease.sql)).bind(now).bind(q.id);
                        let query = match lease.tokens {
                            Some(tokens) => query.bind(tokens).bind(lease.expires_at),
                            None => query,
                        };
                        match &picked_ids {
                            Some(ids) => query.bind(ids).fetch_all(&mut *tx).await?,
                            None => query.bind(partitions_param(&partitions)).fetch_all(&mut *tx).await?,
                        }
                    };
                    if let Some((g, flow_sql)) = &granted {
                        let taken = u32::try_from(rows.len()).unwrap_or(u32::MAX);
                        let rate = q.config.queue_rate();
                        crate::flow::taken(&mut tx, flow_sql, q.id, rate, g, now, taken).await?;
                    }
                    tx.commit().await?;
                    return Ok(Ok((rows, changes)));
                }
                Ok(Err(Error::Storage("a group lease found its group changing on every try".into())))
            })
            .await?;
        let (rows, changes) = outcome?;
        group::record(&changes, q.name.as_str(), group.as_str());
        Ok(rows)
    }
}

/// The parameter of a group lease's partitions in an at-least-once queue's lease (after `$1`
/// now, `$2` queue, `$3` tokens, `$4` expiry).
pub(crate) const PARTITIONS_PARAM: usize = 5;

/// `template` (a lease statement of up to `max_jobs` jobs, whose ready jobs are picked by
/// `WHERE queue_id = $2 AND state = 1`) restricted to the partitions in parameter `$param`.
///
/// The candidates are each partition's first `max_jobs` ready jobs in lease order, read along
/// `jobs_ready_partition`, ranked within their partition; the lease takes rank 0 of every
/// partition before rank 1 of any (then by lease order), so that one partition's backlog (one
/// just handed over from a member that died) does not hold back the member's other partitions.
/// The statement then locks those it can, in lease order, as a lease does. Filtering the walk of `jobs_ready` by partition instead costs a walk
/// of every ready job of the queue when the member's partitions have none ready (8 ms with
/// 44,000 ready elsewhere), which an idle member would pay on every wake-up; this way a lease
/// reads at most `max_jobs` index entries per partition it owns, whatever the rest of the queue
/// holds. A candidate another lease holds is skipped, so a lease racing another of the same
/// member may take fewer than are ready; the lease that took them passes a wake-up on (see
/// `jobs`), and the skipped lease then looks again.
pub(crate) fn restricted(template: &str, max_jobs: u32, param: usize) -> String {
    let pick = "WHERE queue_id = $2 AND state = 1";
    debug_assert_eq!(template.matches(pick).count(), 1, "a lease statement picks its jobs in one place");
    let candidates = format!(
        "WHERE id = ANY (ARRAY(
        SELECT c.id FROM unnest(${param}::int4[]) AS p (partition) CROSS JOIN LATERAL (
            SELECT r.id, r.priority, r.run_at,
                   row_number() OVER (ORDER BY r.priority DESC, r.run_at, r.id) AS rank
            FROM (SELECT id, priority, run_at FROM {{s}}.jobs
                  WHERE queue_id = $2 AND state = 1 AND partition IS NOT NULL AND partition = p.partition
                  ORDER BY priority DESC, run_at, id
                  LIMIT {max_jobs}) r) c
        ORDER BY c.rank, c.priority DESC, c.run_at, c.id
        LIMIT {max_jobs}))
      AND queue_id = $2 AND state = 1"
    );
    template.replacen(pick, &candidates, 1)
}
