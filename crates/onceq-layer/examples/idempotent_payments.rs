//! An axum payments service made idempotent by `IdempotencyLayer` over the embedded store.
//!
//! It serves `POST /payments` on a free loopback port, then plays a client whose connection
//! dropped: it sends the same payment twice with the same `Idempotency-Key`. The second answer is
//! the first one replayed (`Idempotent-Replayed: true`) and the card is charged once. A request
//! without a key is refused. Then it stops, and exits non-zero if any of that did not hold.
//!
//! ```text
//! cargo run --example idempotent_payments -p onceq-layer
//! ```

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use onceq_core::IdempotencyStore;
use onceq_layer::IdempotencyLayer;
use onceq_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};

/// The payment provider, played by a counter of charges made.
#[derive(Default)]
struct Provider {
    charges: AtomicUsize,
}

/// `POST /payments {"amount_cents", "currency"}`: charges the card and answers 201.
async fn create_payment(
    State(provider): State<Arc<Provider>>,
    Json(payment): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let number = provider.charges.fetch_add(1, Ordering::SeqCst) + 1;
    let receipt = json!({
        "payment_id": format!("pay_{number:06}"),
        "amount_cents": payment["amount_cents"],
        "currency": payment["currency"],
        "status": "charged",
    });
    (StatusCode::CREATED, Json(receipt))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run().await
}

/// The whole example; `cargo test` runs it too (the example is built with `test = true`).
async fn run() -> Result<(), Box<dyn Error>> {
    // The embedded store keeps the idempotency records; a temporary directory keeps runs apart.
    let data = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(data.path()))?);
    let provider = Arc::new(Provider::default());

    let layer = IdempotencyLayer::new(store.clone() as Arc<dyn IdempotencyStore>)
        .required_for_methods([Method::POST])
        .retention(Duration::from_secs(24 * 60 * 60));
    let app = Router::new().route("/payments", post(create_payment)).with_state(provider.clone()).layer(layer);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    println!("payments service on http://{address}");

    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let url = format!("http://{address}/payments");
    let payment = json!({"amount_cents": 4200, "currency": "EUR"});
    let key = "order-1001-payment";

    let mut answers = Vec::new();
    for attempt in 1..=2 {
        let response = client.post(&url).header("Idempotency-Key", key).json(&payment).send().await?;
        let status = response.status();
        let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
        let body = response.text().await?;
        println!("attempt {attempt}: {status} replayed={replayed} {body}");
        answers.push((status, replayed, body));
    }
    let unkeyed = client.post(&url).json(&payment).send().await?;
    let unkeyed_status = unkeyed.status();
    println!("without a key: {unkeyed_status} {}", unkeyed.text().await?);

    let _ = stop.send(());
    server.await??;
    store.close().await;

    let charges = provider.charges.load(Ordering::SeqCst);
    let (first, second) = (&answers[0], &answers[1]);
    let held = first.0 == reqwest::StatusCode::CREATED
        && !first.1
        && second.1
        && second.0 == first.0
        && second.2 == first.2
        && charges == 1
        && unkeyed_status == reqwest::StatusCode::BAD_REQUEST;
    if !held {
        return Err(
            format!("expected one charge and an identical replay; got {charges} charges and {answers:?}").into()
        );
    }
    println!("the second attempt was replayed, and the card was charged once ({charges} charge)");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_example_charges_once_and_replays() {
        if let Err(error) = super::run().await {
            panic!("{error}");
        }
    }
}
