//! The SQL of queue operations: create (by upsert or a first enqueue), config, pause and
//! resume, delete.

use onceq_core::{Error, QueueConfig, QueueConfigPatch, QueueName, Result};
use rusqlite::{params, Connection};

use crate::schema::{state, storage};
use crate::writer::cache::{QueueEntry, State};

impl State {
    pub(super) fn queue_create(&mut self, conn: &Connection, name: &QueueName, config: QueueConfig) -> Result<()> {
        let text = serde_json::to_string(&config).map_err(|e| Error::Storage(format!("encoding config: {e}")))?;
        conn.prepare_cached("INSERT INTO queues (name, config, paused, created_at) VALUES (?1, ?2, 0, ?3)")
            .and_then(|mut s| s.execute(params![name.as_str(), text, self.now.as_millis()]))
            .map_err(storage("creating a queue"))?;
        let id = conn.last_insert_rowid();
        self.names.insert(id, name.clone());
        self.queues.insert(name.clone(), QueueEntry { id, config, paused: false, counts: [0; state::COUNT] });
        self.dirty.insert(id);
        Ok(())
    }

    pub(crate) fn queue_upsert(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        patch: &QueueConfigPatch,
    ) -> Result<QueueConfig> {
        match self.queues.get(name) {
            None => {
                let config = QueueConfig::default().patched(patch)?;
                self.queue_create(conn, name, config.clone())?;
                if let Some(entry) = self.queues.get(name) {
                    self.flow_configured(entry.id, &config);
                }
                self.touch(&config);
                Ok(config)
            }
            Some(entry) => {
                // The reply waits as the stricter of the old and the new durability says.
                self.touch(&entry.config);
                let config = entry.config.patched(patch)?;
                // A job's state and partition were decided by the ordering it was enqueued under.
                let jobs: u64 = entry.counts.iter().sum();
                onceq_core::store::validate::reshape(name, &entry.config, &config, jobs)?;
                let text =
                    serde_json::to_string(&config).map_err(|e| Error::Storage(format!("encoding config: {e}")))?;
                conn.prepare_cached("UPDATE queues SET config = ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![entry.id, text]))
                    .map_err(storage("updating a queue"))?;
                let id = entry.id;
                if let Some(entry) = self.queues.get_mut(name) {
                    entry.config = config.clone();
                }
                self.flow_configured(id, &config);
                self.dirty.insert(id);
                self.touch(&config);
                Ok(config)
            }
        }
    }

    pub(crate) fn queue_set_paused(&mut self, conn: &Connection, name: &QueueName, paused: bool) -> Result<()> {
        let id = self.queue_required(name)?.id;
        conn.prepare_cached("UPDATE queues SET paused = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, paused]))
            .map_err(storage("pausing a queue"))?;
        if let Some(entry) = self.queues.get_mut(name) {
            entry.paused = paused;
            if !paused && entry.counts[state::READY as usize] > 0 {
                self.woken.insert(id, entry.counts[state::READY as usize]);
            }
        }
        self.dirty.insert(id);
        Ok(())
    }

    pub(crate) fn queue_delete(&mut self, conn: &Connection, name: &QueueName) -> Result<()> {
        let id = self.queue_required(name)?.id;
        conn.execute_batch(&format!(
            "DELETE FROM job_errors WHERE job_id IN (SELECT id FROM jobs WHERE queue_id = {id}); \
             DELETE FROM jobs WHERE queue_id = {id}; DELETE FROM dedup WHERE queue_id = {id}; \
             DELETE FROM unique_keys WHERE queue_id = {id}; \
             DELETE FROM keys WHERE queue_id = {id}; DELETE FROM blocked WHERE queue_id = {id}; \
             DELETE FROM groups WHERE queue_id = {id}; \
             DELETE FROM queues WHERE id = {id};"
        ))
        .map_err(storage("deleting a queue"))?;
        self.queues.remove(name);
        self.names.remove(&id);
        self.dirty.remove(&id);
        self.woken.remove(&id);
        self.buckets.remove(&id);
        self.deleted.push(name.clone());
        self.groups_woken.remove(&id);
        // Its groups are gone: waiting group leases look again (and learn the queue is gone).
        // They reach the writer after this transaction, which is already running.
        self.shared.group_waiters.wake_all(name);
        Ok(())
    }
}
