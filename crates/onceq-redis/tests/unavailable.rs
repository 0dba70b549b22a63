//! A Redis that cannot be reached gives `Error::Unavailable` with an actionable message, never a
//! panic: at connect, and when the connection drops mid-run. Once Redis is reachable again the
//! same store recovers by itself, without reconnecting by hand.

// A panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod local_redis;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceq_core::{Begin, BeginOutcome, Complete, Error, IdempotencyStore};
use onceq_redis::{RedisIdempotencyStore, RedisOptions};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

fn begin(key: &str, owner: &str) -> Begin {
    Begin { key: key.into(), owner: owner.into(), ttl_ms: 60_000, fingerprint: None }
}

/// A port on this machine where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable_at_connect() {
    let port = closed_port();
    let started = Instant::now();
    let result = RedisIdempotencyStore::connect(RedisOptions::new(format!("redis://127.0.0.1:{port}"))).await;
    let Err(Error::Unavailable(message)) = result else {
        panic!("expected Unavailable, got {result:?}");
    };
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("unreachable") && message.contains("check that it is running"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(30), "connect took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_bad_url_is_an_invalid_request() {
    let result = RedisIdempotencyStore::connect(RedisOptions::new("http://127.0.0.1:6379")).await;
    assert!(matches!(&result, Err(Error::InvalidRequest(m)) if m.contains("Redis URL")), "{result:?}");
}

/// A TCP forwarder to the test Redis that can cut every connection and refuse new ones.
struct Proxy {
    address: SocketAddr,
    redis: SocketAddr,
    /// The accept loop and every forwarding task, aborted by `cut`.
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(redis: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy { address: listener.local_addr().unwrap(), redis, tasks: Arc::default() };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (redis, tasks) = (self.redis, self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let forward = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(redis).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(forward);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Closes every connection and the listening socket: Redis looks gone.
    async fn cut(&self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address: Redis is back.
    fn resume(&self) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.address).unwrap();
        self.serve(socket.listen(64).unwrap());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_unavailable_and_the_store_recovers() {
    let redis_url = local_redis::url();
    let redis_address: SocketAddr = {
        let client = redis::Client::open(redis_url.as_str()).unwrap();
        let address = client.get_connection_info().addr().to_string();
        tokio::net::lookup_host(address).await.unwrap().next().unwrap()
    };
    let proxy = Proxy::start(redis_address).await;
    let prefix = local_redis::unique_prefix();
    let _guard = local_redis::PrefixGuard { prefix: prefix.clone() };
    // Connect through the proxy; the test Redis must be up (else the test fails saying how).
    let _direct = local_redis::connect(&prefix, None).await;
    let options = RedisOptions { url: format!("redis://{}", proxy.address), key_prefix: prefix.clone(), clock: None };
    let store = RedisIdempotencyStore::connect(options).await.unwrap();
    assert_eq!(store.idempotency_begin(begin("before", "w1")).await, Ok(BeginOutcome::Acquired));

    proxy.cut().await;
    let started = Instant::now();
    for attempt in 0..3 {
        let result = store.idempotency_begin(begin("during", "w1")).await;
        let Err(Error::Unavailable(message)) = &result else {
            panic!("attempt {attempt}: expected Unavailable, got {result:?}");
        };
        assert!(message.contains(&proxy.address.to_string()) && message.contains("unreachable"), "{message}");
    }
    let complete = Complete { key: "before".into(), owner: "w1".into(), result: b"r".to_vec(), retention_ms: 60_000 };
    let result = store.idempotency_complete(complete.clone()).await;
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(60), "failing took {:?}", started.elapsed());

    proxy.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.idempotency_complete(complete.clone()).await {
            Ok(()) => break,
            Err(Error::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("after Redis came back: {error}"),
        }
    }
    assert_eq!(
        store.idempotency_begin(begin("before", "w2")).await,
        Ok(BeginOutcome::Completed { result: b"r".to_vec() })
    );
    // Nothing was written while Redis was unreachable.
    assert_eq!(local_redis::keys_under(&prefix).await, vec![format!("{prefix}{{before}}")]);
}
