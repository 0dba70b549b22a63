//! `impl Store for Client`: each seam operation as its endpoint of `docs/api.md`.
//!
//! Every operation first runs the validation the embedded store runs (`onceq_core::store::validate`
//! and friends), so invalid input fails before it is sent, with the very same error. Batch
//! settles use the batch endpoints (`/v1/acks`, `/v1/nacks`, `/v1/extends`, `/v1/fails`): one
//! request per batch, one result per item.

use std::time::Duration;

use async_trait::async_trait;
use onceq_core::api::{
    parse_time, AcksRequest, CommitRequest, DeadListResponse, EnqueueJob, EnqueueRequest, EnqueueResponse, ExtendItem,
    ExtendsRequest, FailItem, FailsRequest, GroupList, JobView, LeaseReleaseItem, LeaseReleasesRequest, LeaseRequest,
    LeaseResponse, NackItem, NacksRequest, PacedRedriveView, PurgeResponse, QueueList, RedriveList, RedriveRequest,
    RedriveResponse, RedriveTickResponse, ScheduleList, ScheduleRequest, ScheduleView, SettleResult, SettleResults,
};
use onceq_core::commit::{Commit, CommitOutcome, ProducerId, Registration};
use onceq_core::group::{GroupInfo, GroupName, JoinOptions, MemberId, MemberView};
use onceq_core::limits::DELAY_MS_MAX;
use onceq_core::redrive::PacedRedrive;
use onceq_core::schedule::{ScheduleInfo, ScheduleName, ScheduleSpec, TickReport};
use onceq_core::store::validate;
use onceq_core::{
    truncate_error_text, Backoff, DeadList, DeadPage, Enqueued, Extend, Fail, ItemResults, Jitter, Job, JobId,
    LeaseOptions, LeaseRef, LeasedJob, Nack, NackOutcome, NewJob, QueueConfig, QueueConfigPatch, QueueInfo, QueueName,
    Redrive, RedriveId, Redriven, Result, Store, Timestamp,
};
use reqwest::Method;
use serde::Serialize;

use crate::client::{queue_segment, Client};
use crate::error::Missing;

/// `/v1/queues/{queue}` followed by `rest`.
fn queue_path(queue: &QueueName, rest: &str) -> Result<String> {
    Ok(format!("/v1/queues/{}{rest}", queue_segment(queue)?))
}

/// `/v1/queues/{queue}/groups/{group}` followed by `rest`. Group names are URL-safe
/// (`[A-Za-z0-9._-]`, never only dots), as member ids are (hex), so each is its own segment.
fn group_path(queue: &QueueName, group: &GroupName, rest: &str) -> Result<String> {
    queue_path(queue, &format!("/groups/{}{rest}", group.as_str()))
}

/// The path of one member of a group, followed by `rest`.
fn member_path(queue: &QueueName, group: &GroupName, member: &MemberId, rest: &str) -> Result<String> {
    group_path(queue, group, &format!("/members/{}{rest}", member.as_str()))
}

/// `/v1/schedules/{name}` followed by `rest` (schedule names are URL-safe, never only dots).
fn schedule_path(name: &ScheduleName, rest: &str) -> String {
    format!("/v1/schedules/{}{rest}", name.as_str())
}

/// The wire form of a new job (payload bytes kept exactly: see `onceq_core::api`).
fn wire_job(job: &NewJob) -> EnqueueJob {
    EnqueueJob::from_new_job(job)
}

impl Client {
    /// One page of `GET /v1/queues`.
    async fn queue_page(&self, after: Option<&QueueName>, limit: u32) -> Result<QueueList> {
        let mut call = self.call(Method::GET, "/v1/queues").query("limit", &limit.to_string());
        if let Some(after) = after {
            call = call.query("after", after.as_str());
        }
        let list: QueueList = call.fetch().await?;
        if list.queues.len() > limit as usize {
            return Err(self.unreadable("a queue page", format!("{} queues for a limit of {limit}", list.queues.len())));
        }
        Ok(list)
    }

    /// Runs a batch settle call: posts `body` to `path`, checks that the server answered each
    /// of `ids` in order, and turns each item's success into its value with `value`.
    async fn settle<T>(
        &self,
        path: &str,
        body: &impl Serialize,
        ids: impl ExactSizeIterator<Item = JobId>,
        value: impl Fn(&SettleResult) -> Result<T>,
    ) -> Result<ItemResults<T>> {
        let replied: SettleResults = self.call(Method::POST, path).json(body).fetch().await?;
        let sent = ids.len();
        if replied.results.len() != sent || !replied.results.iter().map(|r| r.id).eq(ids) {
            let got: Vec<JobId> = replied.results.iter().map(|r| r.id).collect();
            return Err(
                self.unreadable(&format!("results for jobs {got:?}"), format!("{sent} items were sent, in order"))
            );
        }
        let mut results = Vec::with_capacity(sent);
        for result in replied.results {
            if !result.ok && result.error.is_none() {
                return Err(self.unreadable(&format!("a failed result for job {}", result.id), "it has no error"));
            }
            match result.into_result() {
                Ok(ok) => results.push(Ok(value(&ok)?)),
                Err(err) => results.push(Err(err)),
            }
        }
        Ok(results)
    }

    /// A time the server sent.
    fn time(&self, what: &str, text: &str) -> Result<Timestamp> {
        parse_time(text).map_err(|e| self.unreadable(what, e))
    }

    /// Checks that a member view the server sent is the one asked for.
    fn member_view(&self, view: MemberView, member: Option<&MemberId>) -> Result<MemberView> {
        if let Some(member) = member.filter(|m| **m != view.member_id) {
            return Err(self
                .unreadable(&format!("the view of member {} for member {member}", view.member_id), "the ids differ"));
        }
        Ok(view)
    }

    /// Leases through `path`'s lease endpoint with `body`, waiting up to `options.wait_ms`.
    async fn lease(&self, queue: &QueueName, body: &LeaseRequest, options: LeaseOptions) -> Result<Vec<LeasedJob>> {
        // The server may hold the call for `wait_ms`; only what comes after counts against
        // the client's timeout.
        let call = self.call(Method::POST, &queue_path(queue, "/leases")?).json(body);
        let call = call.waiting(Duration::from_millis(options.wait_ms)).missing(Missing::Queue(queue.clone()));
        let leased: LeaseResponse = call.fetch().await?;
        if leased.jobs.len() > options.max_jobs as usize {
            let got = leased.jobs.len();
            return Err(self.unreadable("a lease reply", format!("{got} jobs for max_jobs {}", options.max_jobs)));
        }
        leased
            .jobs
            .into_iter()
            .map(|view| {
                let id = view.id;
                view.into_leased().map_err(|e| self.unreadable(&format!("leased job {id}"), e))
            })
            .collect()
    }

    /// A schedule the server sent, checked to be the one asked for.
    fn schedule_info(&self, view: ScheduleView, name: &ScheduleName) -> Result<ScheduleInfo> {
        if &view.name != name {
            return Err(self.unreadable(&format!("schedule {} for schedule {name}", view.name), "the names differ"));
        }
        view.into_info().map_err(|e| self.unreadable(&format!("schedule {name}"), e))
    }

    /// A job the server sent.
    fn job(&self, view: JobView) -> Result<Job> {
        let id = view.id;
        view.into_job().map_err(|e| self.unreadable(&format!("job {id}"), e))
    }
}

#[async_trait]
impl Store for Client {
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        validate::commit(&commit)?;
        let body = CommitRequest::from_commit(&commit);
        let outcome: CommitOutcome =
            self.patiently(|| self.call(Method::POST, "/v1/commits").json(&body).fetch()).await?;
        let shape = |c: &Commit| c.enqueue.iter().map(|e| (e.queue.clone(), e.jobs.len())).collect::<Vec<_>>();
        let got: Vec<_> = outcome.enqueued.iter().map(|e| (e.queue.clone(), e.jobs.len())).collect();
        if got != shape(&commit) {
            return Err(self.unreadable("a commit reply", format!("{got:?} enqueued for {:?}", shape(&commit))));
        }
        Ok(outcome)
    }

    async fn producer_register(&self, producer: &ProducerId) -> Result<Registration> {
        // Producer ids are URL-safe (`[A-Za-z0-9._:-]`): the id is its own segment.
        self.call(Method::POST, &format!("/v1/producers/{}", producer.as_str())).fetch().await
    }

    async fn producer_get(&self, producer: &ProducerId) -> Result<Registration> {
        self.call(Method::GET, &format!("/v1/producers/{}", producer.as_str())).fetch().await
    }

    async fn schedule_delete(&self, name: &ScheduleName) -> Result<()> {
        let call = self.call(Method::DELETE, &schedule_path(name, ""));
        call.missing(Missing::Schedule(name.clone())).send().await
    }

    async fn schedule_get(&self, name: &ScheduleName) -> Result<ScheduleInfo> {
        let call = self.call(Method::GET, &schedule_path(name, ""));
        let view: ScheduleView = call.missing(Missing::Schedule(name.clone())).fetch().await?;
        self.schedule_info(view, name)
    }

    async fn schedule_list(&self) -> Result<Vec<ScheduleInfo>> {
        let listed: ScheduleList = self.call(Method::GET, "/v1/schedules").fetch().await?;
        listed
            .schedules
            .into_iter()
            .map(|view| {
                let name = view.name.clone();
                view.into_info().map_err(|e| self.unreadable(&format!("schedule {name}"), e))
            })
            .collect()
    }

    async fn schedule_pause(&self, name: &ScheduleName) -> Result<()> {
        let call = self.call(Method::POST, &schedule_path(name, "/pause"));
        call.missing(Missing::Schedule(name.clone())).send().await
    }

    async fn schedule_resume(&self, name: &ScheduleName) -> Result<()> {
        let call = self.call(Method::POST, &schedule_path(name, "/resume"));
        call.missing(Missing::Schedule(name.clone())).send().await
    }

    async fn schedule_tick(&self) -> Result<TickReport> {
        self.call(Method::POST, "/v1/schedule-ticks").fetch().await
    }

    async fn schedule_upsert(&self, name: &ScheduleName, spec: ScheduleSpec) -> Result<ScheduleInfo> {
        spec.validate()?;
        let body = ScheduleRequest::from_spec(&spec);
        let view: ScheduleView = self.call(Method::PUT, &schedule_path(name, "")).json(&body).fetch().await?;
        self.schedule_info(view, name)
    }

    async fn dead_list(&self, queue: &QueueName, page: DeadPage) -> Result<DeadList> {
        validate::dead_page(&page)?;
        let mut call = self.call(Method::GET, &queue_path(queue, "/dead")?).query("limit", &page.limit.to_string());
        if let Some(after) = page.after {
            call = call.query("after", &after.to_string());
        }
        let listed: DeadListResponse = call.missing(Missing::Queue(queue.clone())).fetch().await?;
        let jobs = listed.jobs.into_iter().map(|view| self.job(view)).collect::<Result<Vec<_>>>()?;
        if jobs.len() > page.limit as usize {
            return Err(
                self.unreadable("a dead-letter page", format!("{} jobs for a limit of {}", jobs.len(), page.limit))
            );
        }
        Ok(DeadList { jobs, next: listed.next })
    }

    async fn dead_purge(&self, queue: &QueueName) -> Result<u64> {
        let call = self.call(Method::DELETE, &queue_path(queue, "/dead")?).missing(Missing::Queue(queue.clone()));
        let purged: PurgeResponse = call.fetch().await?;
        Ok(purged.purged)
    }

    async fn dead_redrive(&self, queue: &QueueName, redrive: Redrive) -> Result<Redriven> {
        validate::redrive(&redrive)?;
        let body = RedriveRequest::from_redrive(&redrive);
        let missing = match &redrive.to_queue {
            Some(to) => Missing::Queues(queue.clone(), to.clone()),
            None => Missing::Queue(queue.clone()),
        };
        let call = self.call(Method::POST, &queue_path(queue, "/dead/redrive")?).json(&body);
        let reply: RedriveResponse = call.missing(missing).fetch().await?;
        Ok(Redriven { matched: reply.matched, redriven: reply.redriven, last: reply.last })
    }

    async fn redrive_get(&self, id: RedriveId) -> Result<PacedRedrive> {
        let call = self.call(Method::GET, &format!("/v1/redrives/{id}"));
        let view: PacedRedriveView = call.missing(Missing::Redrive(id)).fetch().await?;
        view.into_paced().map_err(|e| self.unreadable(&format!("redrive {id}"), e.detail()))
    }

    async fn redrive_list(&self) -> Result<Vec<PacedRedrive>> {
        let listed: RedriveList = self.call(Method::GET, "/v1/redrives").fetch().await?;
        listed
            .redrives
            .into_iter()
            .map(|view| view.into_paced().map_err(|e| self.unreadable("a redrive listing", e.detail())))
            .collect()
    }

    async fn redrive_start(&self, queue: &QueueName, redrive: Redrive, rate_per_second: u32) -> Result<PacedRedrive> {
        validate::redrive(&redrive)?;
        let mut body = RedriveRequest::from_redrive(&redrive);
        body.rate_per_second = Some(rate_per_second);
        let missing = match &redrive.to_queue {
            Some(to) => Missing::Queues(queue.clone(), to.clone()),
            None => Missing::Queue(queue.clone()),
        };
        let call = self.call(Method::POST, &queue_path(queue, "/dead/redrive")?).json(&body);
        let view: PacedRedriveView = call.missing(missing).fetch().await?;
        view.into_paced().map_err(|e| self.unreadable("a started redrive", e.detail()))
    }

    async fn redrive_stop(&self, id: RedriveId) -> Result<PacedRedrive> {
        let call = self.call(Method::POST, &format!("/v1/redrives/{id}/stop"));
        let view: PacedRedriveView = call.missing(Missing::Redrive(id)).fetch().await?;
        view.into_paced().map_err(|e| self.unreadable(&format!("redrive {id}"), e.detail()))
    }

    async fn redrive_tick(&self) -> Result<u64> {
        let reply: RedriveTickResponse = self.call(Method::POST, "/v1/redrive-ticks").fetch().await?;
        Ok(reply.redriven)
    }

    async fn group_get(&self, queue: &QueueName, group: &GroupName) -> Result<GroupInfo> {
        let call = self.call(Method::GET, &group_path(queue, group, "")?).missing(Missing::Queue(queue.clone()));
        let info: GroupInfo = call.fetch().await?;
        if &info.group != group {
            return Err(self.unreadable(&format!("group {} for group {group}", info.group), "the names differ"));
        }
        Ok(info)
    }

    async fn group_heartbeat(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<MemberView> {
        let call = self.call(Method::POST, &member_path(queue, group, member, "/heartbeat")?);
        let view: MemberView = call.missing(Missing::Queue(queue.clone())).fetch().await?;
        self.member_view(view, Some(member))
    }

    async fn group_join(&self, queue: &QueueName, group: &GroupName, options: JoinOptions) -> Result<MemberView> {
        options.validate()?;
        let call = self.call(Method::POST, &group_path(queue, group, "/members")?).json(&options);
        let view: MemberView = call.missing(Missing::Queue(queue.clone())).fetch().await?;
        self.member_view(view, None)
    }

    async fn group_lease(
        &self,
        queue: &QueueName,
        group: &GroupName,
        member: &MemberId,
        options: LeaseOptions,
    ) -> Result<Vec<LeasedJob>> {
        options.validate()?;
        let body = lease_request(options, Some((group, member)));
        self.lease(queue, &body, options).await
    }

    async fn group_leave(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<()> {
        let call = self.call(Method::DELETE, &member_path(queue, group, member, "")?);
        call.missing(Missing::Queue(queue.clone())).send().await
    }

    async fn group_list(&self, queue: &QueueName) -> Result<Vec<GroupInfo>> {
        let call = self.call(Method::GET, &queue_path(queue, "/groups")?).missing(Missing::Queue(queue.clone()));
        let list: GroupList = call.fetch().await?;
        Ok(list.groups)
    }

    async fn job_ack(&self, acks: &[LeaseRef]) -> Result<ItemResults<()>> {
        validate::settle_batch(acks.len())?;
        let body = AcksRequest { acks: acks.to_vec() };
        self.settle("/v1/acks", &body, acks.iter().map(|a| a.id), |_| Ok(())).await
    }

    async fn job_enqueue(&self, queue: &QueueName, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        validate::enqueue(&jobs)?;
        let body = EnqueueRequest { jobs: jobs.iter().map(wire_job).collect(), producer: None };
        let path = queue_path(queue, "/jobs")?;
        let enqueued: EnqueueResponse = self.patiently(|| self.call(Method::POST, &path).json(&body).fetch()).await?;
        if enqueued.jobs.len() != jobs.len() {
            let got = enqueued.jobs.len();
            return Err(self.unreadable("an enqueue reply", format!("{got} results for {} jobs", jobs.len())));
        }
        Ok(enqueued.jobs)
    }

    async fn job_extend(&self, extends: &[Extend]) -> Result<ItemResults<Timestamp>> {
        validate::extends(extends)?;
        let items = extends
            .iter()
            .map(|e| ExtendItem {
                id: e.id,
                lease_token: e.lease_token,
                visibility_timeout_ms: e.visibility_timeout_ms,
            })
            .collect();
        let body = ExtendsRequest { extends: items };
        self.settle("/v1/extends", &body, extends.iter().map(|e| e.id), |ok| match &ok.lease_expires_at {
            Some(at) => self.time(&format!("the new lease expiry of job {}", ok.id), at),
            None => Err(self.unreadable(&format!("an extend result for job {}", ok.id), "it has no lease_expires_at")),
        })
        .await
    }

    async fn job_fail(&self, fails: &[Fail]) -> Result<ItemResults<()>> {
        validate::settle_batch(fails.len())?;
        // Cut as the store would keep it (idempotent), so a huge error text cannot push the
        // request past the server's body limit.
        let items = fails
            .iter()
            .map(|f| FailItem { id: f.id, lease_token: f.lease_token, error: truncate_error_text(&f.error) })
            .collect();
        let body = FailsRequest { fails: items };
        self.settle("/v1/fails", &body, fails.iter().map(|f| f.id), |_| Ok(())).await
    }

    async fn job_release(&self, releases: &[onceq_core::Release]) -> Result<ItemResults<()>> {
        validate::releases(releases)?;
        let items = releases
            .iter()
            .map(|r| LeaseReleaseItem { id: r.id, lease_token: r.lease_token, delay_ms: r.delay_ms })
            .collect();
        let body = LeaseReleasesRequest { releases: items };
        self.settle("/v1/releases", &body, releases.iter().map(|r| r.id), |_| Ok(())).await
    }

    async fn job_cancel(&self, id: JobId) -> Result<Job> {
        // Idempotent: cancelling again changes nothing, so a retry after a lost reply is safe.
        let view: JobView = self
            .patiently(|| self.call(Method::POST, &format!("/v1/jobs/{id}/cancel")).missing(Missing::Job(id)).fetch())
            .await?;
        if view.id != id {
            return Err(self.unreadable(&format!("job {} for job {id}", view.id), "the ids differ"));
        }
        self.job(view)
    }

    async fn job_delete(&self, id: JobId) -> Result<()> {
        // Not retried: a delete whose reply was lost would answer its retry with not_found.
        self.call(Method::DELETE, &format!("/v1/jobs/{id}")).missing(Missing::Job(id)).send().await
    }

    async fn job_kill(&self, id: JobId, error: &str) -> Result<Job> {
        // Idempotent: a dead job stays as it is, so a retry after a lost reply is safe.
        let body = serde_json::json!({ "error": error });
        let view: JobView = self
            .patiently(|| {
                self.call(Method::POST, &format!("/v1/jobs/{id}/kill")).json(&body).missing(Missing::Job(id)).fetch()
            })
            .await?;
        if view.id != id {
            return Err(self.unreadable(&format!("job {} for job {id}", view.id), "the ids differ"));
        }
        self.job(view)
    }

    async fn job_get(&self, id: JobId) -> Result<Job> {
        let view: JobView = self.call(Method::GET, &format!("/v1/jobs/{id}")).missing(Missing::Job(id)).fetch().await?;
        if view.id != id {
            return Err(self.unreadable(&format!("job {} for job {id}", view.id), "the ids differ"));
        }
        self.job(view)
    }

    async fn job_lease(&self, queue: &QueueName, options: LeaseOptions) -> Result<Vec<LeasedJob>> {
        options.validate()?;
        let body = lease_request(options, None);
        self.lease(queue, &body, options).await
    }

    async fn job_nack(&self, nacks: &[Nack]) -> Result<ItemResults<NackOutcome>> {
        validate::nacks(nacks)?;
        let items = nacks
            .iter()
            .map(|n| NackItem {
                id: n.id,
                lease_token: n.lease_token,
                delay_ms: n.delay_ms,
                error: n.error.as_deref().map(truncate_error_text),
            })
            .collect();
        let body = NacksRequest { nacks: items };
        self.settle("/v1/nacks", &body, nacks.iter().map(|n| n.id), |ok| {
            ok.nack_outcome().map_err(|e| self.unreadable(&format!("a nack result for job {}", ok.id), e))
        })
        .await
    }

    async fn queue_delete(&self, queue: &QueueName) -> Result<()> {
        self.call(Method::DELETE, &queue_path(queue, "")?).missing(Missing::Queue(queue.clone())).send().await
    }

    async fn queue_get(&self, queue: &QueueName) -> Result<QueueInfo> {
        let info: QueueInfo =
            self.call(Method::GET, &queue_path(queue, "")?).missing(Missing::Queue(queue.clone())).fetch().await?;
        if &info.name != queue {
            return Err(self.unreadable(
                &format!("queue {:?} for queue {:?}", info.name.as_str(), queue.as_str()),
                "the names differ",
            ));
        }
        Ok(info)
    }

    /// Every page, in turn (`GET /v1/queues` answers a page at a time).
    async fn queue_list(&self) -> Result<Vec<QueueInfo>> {
        let mut all: Vec<QueueInfo> = Vec::new();
        let mut after: Option<QueueName> = None;
        loop {
            let list = self.queue_page(after.as_ref(), onceq_core::limits::QUEUE_PAGE_MAX).await?;
            all.extend(list.queues);
            match list.next {
                // A server that names as next a queue no later than the last would page forever.
                Some(next) if after.as_ref() < Some(&next) => {
                    after = Some(next);
                }
                Some(next) => return Err(self.unreadable("a queue page", format!("next {next} goes back"))),
                None => return Ok(all),
            }
        }
    }

    async fn queue_list_page(&self, after: Option<&QueueName>, limit: u32) -> Result<Vec<QueueInfo>> {
        let limit = limit.clamp(1, onceq_core::limits::QUEUE_PAGE_MAX);
        Ok(self.queue_page(after, limit).await?.queues)
    }

    async fn queue_pause(&self, queue: &QueueName) -> Result<()> {
        self.call(Method::POST, &queue_path(queue, "/pause")?).missing(Missing::Queue(queue.clone())).send().await
    }

    async fn queue_resume(&self, queue: &QueueName) -> Result<()> {
        self.call(Method::POST, &queue_path(queue, "/resume")?).missing(Missing::Queue(queue.clone())).send().await
    }

    async fn queue_upsert(&self, queue: &QueueName, patch: QueueConfigPatch) -> Result<QueueConfig> {
        // Each field's check is independent of the other fields, and every stored config is
        // valid, so the defaults patched fail exactly when (and as) the current config patched
        // would: the store's error, without a round trip. Except a partial backoff: whether its
        // max_ms is at least its initial_ms depends on the queue's current policy, which only
        // the server knows. It is checked against the widest policy instead, which refuses a
        // field only for its own limit, still in the store's order of checks.
        let partial_backoff = patch.backoff.as_ref().is_some_and(|backoff| backoff.complete().is_none());
        let widest = Backoff { initial_ms: 0, max_ms: DELAY_MS_MAX, multiplier: 1.0, jitter: Jitter::None };
        let base = if partial_backoff {
            QueueConfig { backoff: widest, ..QueueConfig::default() }
        } else {
            QueueConfig::default()
        };
        base.patched(&patch)?;
        self.call(Method::PUT, &queue_path(queue, "")?).json(&patch).fetch().await
    }
}

/// The body of a lease call: as `member` of a group, or not.
fn lease_request(options: LeaseOptions, member: Option<(&GroupName, &MemberId)>) -> LeaseRequest {
    LeaseRequest {
        max_jobs: Some(options.max_jobs),
        visibility_timeout_ms: options.visibility_timeout_ms,
        wait_ms: (options.wait_ms > 0).then_some(options.wait_ms),
        group: member.map(|(group, _)| group.clone()),
        member_id: member.map(|(_, member)| member.clone()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// What the server makes of a job the client sends.
    fn through_the_wire(job: &NewJob) -> NewJob {
        let text = serde_json::to_string(&EnqueueRequest { jobs: vec![wire_job(job)], producer: None }).unwrap();
        let request: EnqueueRequest = serde_json::from_str(&text).unwrap();
        request.jobs.into_iter().next().unwrap().into_new_job(0).unwrap()
    }

    #[test]
    fn payloads_cross_the_wire_byte_for_byte() {
        let payloads: Vec<Vec<u8>> = vec![
            br#"{"a": [1, 2.50, "\u00e9"]}"#.to_vec(),
            b"42".to_vec(),
            b"null".to_vec(),
            b" 1 ".to_vec(),
            b"\n{}\n".to_vec(),
            b"not json".to_vec(),
            vec![0xff, 0x00, 0xfe],
            Vec::new(),
        ];
        for payload in payloads {
            let job =
                NewJob::new(payload.clone()).priority(3).header("k", "v").dedup_id("d").delay_ms(5).ordering_key("k");
            assert_eq!(through_the_wire(&job), job, "payload {:?}", String::from_utf8_lossy(&payload));
        }
    }

    #[test]
    fn json_payloads_travel_as_json() {
        let wire = wire_job(&NewJob::new(r#"{"to":"ada@example.com"}"#));
        assert_eq!(wire.payload.map(|p| p.get().to_owned()), Some(r#"{"to":"ada@example.com"}"#.to_owned()));
        assert_eq!(wire.payload_base64, None);
    }
}
