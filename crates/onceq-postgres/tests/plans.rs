//! Proves that the hot statements keep a cached plan: PostgreSQL plans a prepared statement
//! afresh on every run while its generic plan looks dearer than the custom ones, and planning
//! the lease cost more CPU than running it when its batch size was a parameter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use onceq_core::{LeaseOptions, NewJob, QueueName, Store};

#[tokio::test]
async fn leases_and_acks_run_on_a_cached_generic_plan() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard { schema: schema.clone() };
    // One pooled connection (the listener has its own), so every statement is prepared there.
    let store = common::connect(common::options(&schema, None).pool_size(1)).await;
    let q = QueueName::new("q").unwrap();
    for _ in 0..20 {
        store.job_enqueue(&q, (0..500).map(|i| NewJob::new(format!("{i}"))).collect()).await.unwrap();
    }
    sqlx::query(&format!("ANALYZE \"{schema}\".jobs")).execute(store.pool()).await.unwrap();
    for _ in 0..20 {
        let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: Some(60_000), wait_ms: 0 };
        let leased = store.job_lease(&q, options).await.unwrap();
        assert_eq!(leased.len(), 1);
        let acked = store.job_ack(&leased.iter().map(|j| j.lease()).collect::<Vec<_>>()).await.unwrap();
        assert!(acked.iter().all(Result::is_ok), "{acked:?}");
    }
    let plans: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements \
         WHERE statement LIKE '%UPDATE%' AND custom_plans + generic_plans >= 20",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let lease = plans.iter().find(|(sql, _, _)| sql.contains("WITH picked AS")).expect("the lease statement");
    assert!(lease.1 >= 10, "the lease was planned afresh: {} generic, {} custom plans", lease.1, lease.2);
    for (sql, generic, custom) in &plans {
        assert!(*generic >= 10, "{generic} generic, {custom} custom plans of {sql}");
    }
    store.close().await;
}
