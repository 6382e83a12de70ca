//! A component's stdout and stderr, kept in memory up to a cap.
//!
//! Past the cap, writes still succeed for the guest (so `println!` never traps) but the bytes are
//! dropped and counted: a flood of output costs the host at most `limits.output-bytes` per stream.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// One captured output stream (stdout or stderr) of a store.
#[derive(Clone, Debug)]
pub struct CappedOutput {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Debug, Default)]
struct Captured {
    cap: usize,
    bytes: Vec<u8>,
    dropped: u64,
}

/// What a stream held at the end of a call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    pub bytes: Vec<u8>,
    /// Bytes written past the cap and dropped.
    pub dropped: u64,
}

impl CappedOutput {
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured {
                cap,
                ..Captured::default()
            })),
        }
    }

    /// Takes what was captured so far, leaving the stream empty (a persistent instance's next
    /// call starts with nothing).
    pub fn take(&self) -> CapturedOutput {
        let mut inner = lock(&self.inner);
        CapturedOutput {
            bytes: std::mem::take(&mut inner.bytes),
            dropped: std::mem::take(&mut inner.dropped),
        }
    }
}

fn lock(m: &Mutex<Captured>) -> std::sync::MutexGuard<'_, Captured> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut inner = lock(&self.inner);
        let room = inner.cap.saturating_sub(inner.bytes.len());
        let kept = room.min(buf.len());
        inner.bytes.extend_from_slice(&buf[..kept]);
        inner.dropped += (buf.len() - kept) as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
