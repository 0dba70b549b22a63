//! The SQL of consumer groups (docs/semantics.md, "Consumer groups"; Invariants 10 and 11).
//!
//! A group's whole state is one [`GroupState`], kept as JSON in one row of `groups`. Every group
//! operation runs in the writer, inside its transaction, in one order: load the state (or a
//! fresh one), `refresh` it (fit it to the queue's partitions, remove expired members), ask which
//! partitions in transition hold a live lease (`busy`), `hand_over`, then the operation itself;
//! save the state if it changed, record the metrics. The writer is the only connection that
//! writes, so nothing changes the group, or any lease, between the ownership check and the lease
//! it allows: a hand-over can never run between them.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use onceq_core::flow;
use onceq_core::group::{self, Changes, GroupName, GroupState, JoinOptions, MemberId, MemberView};
use onceq_core::store::validate;
use onceq_core::{Error, LeaseOptions, LeasedJob, Ordering, QueueName, Result, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};

use crate::schema::{state, storage};
use crate::writer::cache::State;
use crate::writer::flow::{key_candidate, KEY_CANDIDATE_SQL};
use crate::writer::jobs::{within_reply_bytes, ReadyRow, READY_ROW_SQL};

/// Whether a partition holds a live lease: a leased job of the partition whose lease has not
/// expired. A search of `jobs_partition` on (queue, partition, state).
pub(crate) const BUSY_SQL: &str = "SELECT 1 FROM jobs \
     WHERE queue_id = ?1 AND partition = ?2 AND state = 2 AND lease_expires_at > ?3 LIMIT 1";

/// One partition's next ready jobs, in lease order: a search of `jobs_partition` on (queue,
/// partition, state) that reads the index only (it holds priority, run_at and id) and stops after
/// `LIMIT` entries, with no sort.
pub(crate) const PARTITION_READY_SQL: &str = "SELECT priority, run_at, id FROM jobs \
     WHERE queue_id = ?1 AND partition = ?2 AND state = 1 ORDER BY priority DESC, run_at, id LIMIT ?3";

/// Each partition's load: jobs not yet done (every state but dead), ready jobs, the oldest ready
/// `run_at`. One pass over the queue's entries of `jobs_partition`, already grouped by partition.
pub(crate) const LOAD_SQL: &str =
    "SELECT partition, count(*), sum(state = 1), min(CASE WHEN state = 1 THEN run_at END) \
     FROM jobs WHERE queue_id = ?1 AND partition IS NOT NULL AND state <> 3 GROUP BY partition";

/// What a group lease hands back to the store's entry point.
pub(crate) struct GroupLeased {
    /// The jobs leased.
    pub jobs: Vec<LeasedJob>,
    /// When the member's session ends unless it heartbeats: a waiting lease looks again by then,
    /// so that a member removed mid-wait learns it.
    pub session_ends_at: Timestamp,
}

/// Groups as `group_get` and `group_list` read them in the writer; the store's entry point adds
/// each partition's load, read on a reader connection.
pub(crate) struct GroupsRead {
    /// The queue's row id.
    pub queue_id: i64,
    /// Each group's name and state, by name.
    pub groups: Vec<(GroupName, GroupState)>,
    /// The time they were read at.
    pub now: Timestamp,
}

/// A group read and readied for an operation, in the writer's transaction.
struct Opened {
    /// The state as stored; `None` for a group never created.
    stored: Option<GroupState>,
    /// The state being changed.
    state: GroupState,
    /// What changed so far, for the metrics.
    changes: Changes,
}

/// The queue a group operation works on.
#[derive(Clone, Copy)]
struct GroupQueue {
    id: i64,
    /// Its partition count; 0 for a queue that is not `per_key` (it has no partitions to share).
    partitions: u32,
}

impl State {
    /// The queue, which must exist; `grouped` also checks it is `per_key`.
    fn group_queue(&self, name: &QueueName, grouped: bool) -> Result<GroupQueue> {
        let entry = self.queue_required(name)?;
        if grouped {
            validate::grouped(name, &entry.config)?;
        }
        let partitions = if entry.config.ordering == Ordering::PerKey { entry.config.partitions } else { 0 };
        Ok(GroupQueue { id: entry.id, partitions })
    }

    /// Loads a group (a fresh state if it was never stored), refreshes it and hands over what
    /// may move.
    fn group_open(&self, conn: &Connection, queue: GroupQueue, group: &GroupName) -> Result<Opened> {
        let text: Option<String> = conn
            .prepare_cached("SELECT state FROM groups WHERE queue_id = ?1 AND name = ?2")
            .and_then(|mut s| s.query_row(params![queue.id, group.as_str()], |r| r.get(0)).optional())
            .map_err(storage("reading a group"))?;
        let stored: Option<GroupState> = text
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| Error::Storage(format!("group {group} has an unreadable stored state: {e}")))
            })
            .transpose()?;
        let mut state = stored.clone().unwrap_or_default();
        let mut changes = state.refresh(queue.partitions, self.now);
        debug_assert_eq!(state.partitions.len(), queue.partitions as usize, "refresh fits the partitions");
        merge(&mut changes, self.group_hand_over(conn, queue, &mut state)?);
        Ok(Opened { stored, state, changes })
    }

    /// Hands over every partition in transition that holds no live lease.
    fn group_hand_over(&self, conn: &Connection, queue: GroupQueue, state: &mut GroupState) -> Result<Changes> {
        let moving = state.in_transition();
        if moving.is_empty() {
            return Ok(Changes::default());
        }
        let mut busy = BTreeSet::new();
        let mut stmt = conn.prepare_cached(BUSY_SQL).map_err(storage("finding live leases"))?;
        for p in moving {
            if stmt.exists(params![queue.id, p, self.now.as_millis()]).map_err(storage("finding live leases"))? {
                busy.insert(p);
            }
        }
        Ok(state.hand_over(&busy, self.now))
    }

    /// Saves the group if it changed (creating it only when `create`), wakes the queue's waiting
    /// group leases if it did, and records the metrics of its changes; returns its state.
    fn group_close(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        queue: GroupQueue,
        group: &GroupName,
        opened: Opened,
        create: bool,
    ) -> Result<GroupState> {
        let state = &opened.state;
        debug_assert!(
            state.partitions.iter().all(|p| p.target.as_ref().is_none_or(|t| state.members.contains_key(t))),
            "group {group}: a partition is assigned to a member that is gone"
        );
        // A group never created stays so (a read or a refused member's call creates nothing),
        // and has no metrics: its fitting to the partitions is no rebalance anyone made.
        if !create && opened.stored.is_none() {
            return Ok(opened.state);
        }
        if opened.stored.as_ref() != Some(&opened.state) {
            let text = serde_json::to_string(&opened.state)
                .map_err(|e| Error::Storage(format!("encoding group {group}: {e}")))?;
            conn.prepare_cached(
                "INSERT INTO groups (queue_id, name, state) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (queue_id, name) DO UPDATE SET state = excluded.state",
            )
            .and_then(|mut s| s.execute(params![queue.id, group.as_str(), text]))
            .map_err(storage("saving a group"))?;
            // A member may have gained partitions, or stopped being a member: waiting leases look.
            self.groups_woken.insert(queue.id);
        }
        group::record(&opened.changes, name.as_str(), group.as_str());
        Ok(opened.state)
    }

    /// The names of the queue's stored groups, in order.
    fn group_names(&self, conn: &Connection, queue: GroupQueue) -> Result<Vec<GroupName>> {
        let mut stmt = conn
            .prepare_cached("SELECT name FROM groups WHERE queue_id = ?1 ORDER BY name")
            .map_err(storage("listing groups"))?;
        let names = stmt
            .query_map([queue.id], |r| r.get::<_, String>(0))
            .map_err(storage("listing groups"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(storage("listing groups"))?;
        names
            .into_iter()
            .map(|n| GroupName::new(n).map_err(|e| Error::Storage(format!("a stored group name is invalid: {e}"))))
            .collect()
    }

    pub(crate) fn group_join(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        group: &GroupName,
        options: &JoinOptions,
    ) -> Result<MemberView> {
        let queue = self.group_queue(name, true)?;
        // One group at a time has members: another group counts only while a member of it is
        // live, so its expired members are removed first.
        let mut consumed_by = None;
        for other in self.group_names(conn, queue)?.into_iter().filter(|other| other != group) {
            let opened = self.group_open(conn, queue, &other)?;
            let state = self.group_close(conn, name, queue, &other, opened, false)?;
            if !state.is_empty() && consumed_by.is_none() {
                consumed_by = Some(other);
            }
        }
        validate::one_group(name, group, consumed_by.as_ref())?;
        let mut opened = self.group_open(conn, queue, group)?;
        let (member, changes) = opened.state.join(options, self.now);
        merge(&mut opened.changes, changes);
        // What nobody leases from moves at once: a first member owns every partition.
        let handed = self.group_hand_over(conn, queue, &mut opened.state)?;
        merge(&mut opened.changes, handed);
        let view = opened.state.view(&member);
        self.group_close(conn, name, queue, group, opened, true)?;
        view
    }

    pub(crate) fn group_heartbeat(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        group: &GroupName,
        member: &MemberId,
    ) -> Result<MemberView> {
        let queue = self.group_queue(name, true)?;
        let mut opened = self.group_open(conn, queue, group)?;
        let view = opened.state.heartbeat(member, self.now).and_then(|()| opened.state.view(member));
        // Saved even when the member is refused: the expiries that refused it are changes too,
        // counted once.
        self.group_close(conn, name, queue, group, opened, false)?;
        view
    }

    pub(crate) fn group_leave(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        group: &GroupName,
        member: &MemberId,
    ) -> Result<()> {
        let queue = self.group_queue(name, true)?;
        let mut opened = self.group_open(conn, queue, group)?;
        let left = opened.state.leave(member, self.now);
        if let Ok(changes) = &left {
            merge(&mut opened.changes, changes.clone());
            let handed = self.group_hand_over(conn, queue, &mut opened.state)?;
            merge(&mut opened.changes, handed);
        }
        self.group_close(conn, name, queue, group, opened, false)?;
        left.map(drop)
    }

    /// Leases like `job_lease`, from the partitions `member` owns and is not giving up only,
    /// decided in this transaction from the group state read in it.
    pub(crate) fn group_lease(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        group: &GroupName,
        member: &MemberId,
        options: LeaseOptions,
    ) -> Result<GroupLeased> {
        let queue = self.group_queue(name, true)?;
        let opened = self.group_open(conn, queue, group)?;
        let session = opened.state.members.get(member).map(|m| m.seen_at.plus_ms(m.session_timeout_ms));
        let partitions = opened.state.leasable(member);
        self.group_close(conn, name, queue, group, opened, false)?;
        let session_ends_at = session.ok_or_else(|| group::not_member(member))?;
        let jobs = self.group_lease_from(conn, name, queue, &partitions, options)?;
        Ok(GroupLeased { jobs, session_ends_at })
    }

    /// Leases up to `max_jobs` ready jobs of `partitions`, in the queue's lease order.
    ///
    /// One index search per partition, each stopping after `max_jobs` entries, merged here by
    /// (priority desc, run_at, id); then only the chosen jobs are read whole. So a lease reads at
    /// most `max_jobs` index entries per owned partition (at most [`LEASE_BATCH_MAX`] ×
    /// [`PARTITIONS_MAX`]), however many jobs wait. A single `partition IN (...)` query cannot
    /// have both the partition search and the order from one index (SQLite does not merge the
    /// ordered runs of an IN list): SQLite plans it as a walk of the whole queue's ready order
    /// (`jobs_ready`) that skips the jobs of other members' partitions, or else it would read
    /// every ready job of those partitions and sort them. Either way its work grows with the
    /// backlog of partitions the member does not lease from, or of those it does.
    ///
    /// [`LEASE_BATCH_MAX`]: onceq_core::limits::LEASE_BATCH_MAX
    /// [`PARTITIONS_MAX`]: onceq_core::limits::PARTITIONS_MAX
    fn group_lease_from(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        queue: GroupQueue,
        partitions: &[u32],
        options: LeaseOptions,
    ) -> Result<Vec<LeasedJob>> {
        let Some(entry) = self.queues.get(name) else { return Ok(Vec::new()) };
        self.touch(&entry.config);
        if partitions.is_empty() || entry.paused || entry.counts[state::READY as usize] == 0 {
            return Ok(Vec::new());
        }
        // A group lease passes the queue's limits like any lease (module `flow`).
        let mut options = options;
        let limited = entry.config.lease_limited().then(|| entry.config.queue_rate().copied());
        let keyed = entry.config.keyed_limits();
        if limited.is_some() {
            let grant = self.flow_grant(name, entry, options.max_jobs);
            if grant.jobs == 0 {
                return Ok(Vec::new());
            }
            options.max_jobs = grant.jobs;
        }
        // Each candidate with its rank in its partition's lease order: the lease takes rank 0 of
        // every partition before rank 1 of any, so that a partition with a long backlog (one just
        // handed over from a member that died) does not hold back the others.
        // Under per-key limits, a bounded scan of candidates is read and the pick takes those
        // whose keys have a token and a free slot (module `flow`).
        let per_partition = if keyed { flow::key_scan_rows(options.max_jobs) } else { options.max_jobs };
        let mut candidates: Vec<(usize, i32, i64, i64)> = Vec::new();
        {
            let mut stmt = conn.prepare_cached(PARTITION_READY_SQL).map_err(storage("leasing jobs"))?;
            for p in partitions {
                let rows = stmt
                    .query_map(params![queue.id, p, per_partition], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(storage("leasing jobs"))?;
                for (rank, row) in rows.enumerate() {
                    let (priority, run_at, id) = row.map_err(storage("leasing jobs"))?;
                    candidates.push((rank, priority, run_at, id));
                }
            }
        }
        candidates.sort_unstable_by_key(|&(rank, priority, run_at, id)| (rank, Reverse(priority), run_at, id));
        candidates.truncate(per_partition as usize);
        if keyed {
            let mut stmt = conn.prepare_cached(KEY_CANDIDATE_SQL).map_err(storage("leasing jobs"))?;
            let mut keyed_rows = Vec::with_capacity(candidates.len());
            for &(_, _, _, id) in &candidates {
                keyed_rows.push(stmt.query_row([id], key_candidate).map_err(storage("leasing jobs"))?);
            }
            let pick = self.flow_key_pick(conn, name, options.max_jobs, &keyed_rows)?;
            candidates = pick.picked.into_iter().map(|i| candidates[i]).collect();
        }
        // Those taken are handed out in lease order, as any lease's.
        candidates.sort_unstable_by_key(|&(_, priority, run_at, id)| (Reverse(priority), run_at, id));
        let rows = {
            let mut stmt = conn.prepare_cached(READY_ROW_SQL).map_err(storage("leasing jobs"))?;
            let rows = candidates.into_iter().map(|(_, _, _, id)| stmt.query_row([id], ReadyRow::read));
            within_reply_bytes(rows)?
        };
        let jobs = self.lease_rows(conn, name, options, rows)?;
        if let Some(rate) = limited {
            self.flow_taken(queue.id, rate.as_ref(), u32::try_from(jobs.len()).unwrap_or(u32::MAX));
        }
        debug_assert!(
            jobs.iter().all(|j| j.partition.is_some_and(|p| partitions.contains(&p))),
            "a group lease handed out a job of a partition its member may not lease from"
        );
        Ok(jobs)
    }

    /// A group as it stands now (a group never created reads as empty, and is not stored).
    pub(crate) fn group_get(&mut self, conn: &Connection, name: &QueueName, group: &GroupName) -> Result<GroupsRead> {
        let queue = self.group_queue(name, false)?;
        let opened = self.group_open(conn, queue, group)?;
        let state = self.group_close(conn, name, queue, group, opened, false)?;
        Ok(GroupsRead { queue_id: queue.id, groups: vec![(group.clone(), state)], now: self.now })
    }

    /// Every stored group of the queue, by name, as they stand now.
    pub(crate) fn group_list(&mut self, conn: &Connection, name: &QueueName) -> Result<GroupsRead> {
        let queue = self.group_queue(name, false)?;
        let mut groups = Vec::new();
        for group in self.group_names(conn, queue)? {
            let opened = self.group_open(conn, queue, &group)?;
            let state = self.group_close(conn, name, queue, &group, opened, false)?;
            groups.push((group, state));
        }
        Ok(GroupsRead { queue_id: queue.id, groups, now: self.now })
    }
}

/// Adds `more` to `into`.
fn merge(into: &mut Changes, more: Changes) {
    into.rebalances += more.rebalances;
    into.moved += more.moved;
    into.idle_ms.extend(more.idle_ms);
    into.expired += more.expired;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use onceq_core::{LeaseOptions, NewJob, Ordering, QueueConfigPatch, QueueName, Store};
    use rusqlite::{Connection, OpenFlags, StatementStatus};

    use super::{BUSY_SQL, LOAD_SQL, PARTITION_READY_SQL};
    use crate::writer::jobs::READY_ROW_SQL;
    use crate::{Durability, SqliteOptions, SqliteStore, DATA_FILE_NAME};

    /// Keys per queue; each key's first job is its head, so about `KEYS / PARTITIONS` ready jobs
    /// per partition.
    const KEYS: usize = 4_000;
    const PARTITIONS: u32 = 16;

    /// A statement's plan (the detail of each line), the rows it returns, and its full-scan steps,
    /// counted by SQLite.
    fn cost(conn: &Connection, sql: &str, params: impl rusqlite::Params + Clone) -> (Vec<String>, usize, i32) {
        let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> =
            explain.query_map(params.clone(), |r| r.get(3)).unwrap().collect::<rusqlite::Result<_>>().unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt.query_map(params, |_| Ok(())).unwrap().count();
        (plan, rows, stmt.get_status(StatementStatus::FullscanStep))
    }

    /// The group lease reads each owned partition's ready jobs by a search of `jobs_partition`
    /// that reads the index only and needs no sort, and stops at its limit; the hand-over's
    /// question (does this partition hold a live lease) is a search of the same index; the
    /// partition loads of `group_get` are one pass over the queue's entries of it, already in
    /// partition order; a chosen job is then read by its id. None scans, and the jobs of an
    /// unordered queue beside it are in none of them.
    #[test]
    fn group_queries_search_the_partition_index() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let store = SqliteStore::open(SqliteOptions::new(dir.path()).durability(Durability::Relaxed)).unwrap();
            let (grouped, plain) = (QueueName::new("grouped").unwrap(), QueueName::new("plain").unwrap());
            let patch = QueueConfigPatch {
                ordering: Some(Ordering::PerKey),
                partitions: Some(PARTITIONS),
                ..QueueConfigPatch::default()
            };
            store.queue_upsert(&grouped, patch).await.unwrap();
            for round in 0..2 {
                let jobs: Vec<NewJob> = (0..KEYS)
                    .map(|i| NewJob::new(format!("{round} {i}")).ordering_key(format!("key-{i:05}")))
                    .collect();
                for batch in jobs.chunks(onceq_core::limits::ENQUEUE_BATCH_MAX) {
                    store.job_enqueue(&grouped, batch.to_vec()).await.unwrap();
                }
                let plain_jobs: Vec<NewJob> = (0..KEYS).map(|i| NewJob::new(format!("{i}"))).collect();
                for batch in plain_jobs.chunks(onceq_core::limits::ENQUEUE_BATCH_MAX) {
                    store.job_enqueue(&plain, batch.to_vec()).await.unwrap();
                }
            }
            let options = LeaseOptions { max_jobs: 100, visibility_timeout_ms: Some(60_000), wait_ms: 0 };
            assert_eq!(store.job_lease(&grouped, options).await.unwrap().len(), 100);
            store.close().await;
        });
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(dir.path().join(DATA_FILE_NAME), flags).unwrap();
        let queue_id: i64 = conn.query_row("SELECT id FROM queues WHERE name = 'grouped'", [], |r| r.get(0)).unwrap();
        let indexed: i64 = conn
            .query_row("SELECT count(*) FROM jobs INDEXED BY jobs_partition WHERE partition IS NOT NULL", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(indexed, 2 * KEYS as i64, "only the per_key queue's jobs are in the partition index");

        let ready = cost(&conn, PARTITION_READY_SQL, (queue_id, 3, 10));
        let index = "jobs_partition (queue_id=? AND partition=? AND state=?)";
        assert_eq!(ready, (vec![format!("SEARCH jobs USING COVERING INDEX {index}")], 10, 0));

        let busy = cost(&conn, BUSY_SQL, (queue_id, 3, 0));
        assert_eq!(busy.0, vec![format!("SEARCH jobs USING INDEX {index}")]);
        assert_eq!(busy.2, 0);
        let leased: i64 =
            conn.query_row("SELECT partition FROM jobs WHERE state = 2 LIMIT 1", [], |r| r.get(0)).unwrap();
        assert_eq!(cost(&conn, BUSY_SQL, (queue_id, leased, 0)).1, 1, "a leased job makes its partition busy");

        let load = cost(&conn, LOAD_SQL, [queue_id]);
        assert_eq!(
            load,
            (
                vec!["SEARCH jobs USING COVERING INDEX jobs_partition (queue_id=? AND partition>?)".to_owned()],
                PARTITIONS as usize,
                0
            )
        );

        let id: i64 = conn.query_row("SELECT id FROM jobs WHERE state = 1 LIMIT 1", [], |r| r.get(0)).unwrap();
        let row = cost(&conn, READY_ROW_SQL, [id]);
        assert_eq!(row, (vec!["SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)".to_owned()], 1, 0));
    }
}
