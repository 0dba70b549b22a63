//! A TCP proxy a test can cut, to take a broker or server "down" for a client without touching
//! the service itself: [`CuttableProxy::cut_and_refuse`] drops every open connection and
//! closes new ones at once until [`CuttableProxy::accept_again`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinHandle;

/// A proxy on 127.0.0.1 to a port on 127.0.0.1; stops when dropped.
pub struct CuttableProxy {
    port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl CuttableProxy {
    /// Starts a proxy to `upstream_port`, listening on a free port.
    pub async fn start(upstream_port: u16) -> std::io::Result<CuttableProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = tokio::spawn({
            let up = up.clone();
            let connections = connections.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let handle = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap_or_else(PoisonError::into_inner).push(handle);
                }
            }
        });
        Ok(CuttableProxy { port, up, connections, acceptor })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut_and_refuse(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            connection.abort();
        }
    }

    /// Lets connections through again.
    pub fn accept_again(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut_and_refuse();
    }
}
