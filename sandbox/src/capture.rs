//! Where a run's standard output and standard error go: memory, within limits.
//!
//! Standard output is part of the result: past its limit the run traps, and the pipe
//! remembers why, so the outcome can name the output limit. Standard error is diagnosis
//! only: it never fails a run, and only its last bytes are kept.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Write permits handed to the guest at a time; the limit is checked on every write.
const WRITE_PERMIT: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// Keep the first `limit` bytes; writing more fails the run.
    Fail,
    /// Keep the last `limit` bytes; older bytes are dropped.
    KeepTail,
}

#[derive(Debug)]
struct Buffer {
    bytes: Vec<u8>,
    limit: usize,
    overflow: Overflow,
    exceeded: bool,
}

impl Buffer {
    fn write(&mut self, data: &[u8]) -> Result<(), ()> {
        match self.overflow {
            Overflow::Fail => {
                if self.bytes.len() + data.len() > self.limit {
                    self.exceeded = true;
                    return Err(());
                }
                self.bytes.extend_from_slice(data);
            }
            Overflow::KeepTail => {
                self.bytes.extend_from_slice(data);
                if self.bytes.len() > self.limit {
                    let excess = self.bytes.len() - self.limit;
                    self.bytes.drain(..excess);
                    self.exceeded = true;
                }
            }
        }
        Ok(())
    }
}

/// An in-memory pipe with a byte limit. Clones share one buffer.
#[derive(Debug, Clone)]
pub struct CappedPipe(Arc<Mutex<Buffer>>);

impl CappedPipe {
    /// A pipe that fails the run once more than `limit` bytes are written.
    pub fn failing_after(limit: u64) -> Self {
        Self::new(limit, Overflow::Fail)
    }

    /// A pipe that keeps only the last `limit` bytes.
    pub fn keeping_tail(limit: u64) -> Self {
        Self::new(limit, Overflow::KeepTail)
    }

    fn new(limit: u64, overflow: Overflow) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Self(Arc::new(Mutex::new(Buffer { bytes: Vec::new(), limit, overflow, exceeded: false })))
    }

    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().expect("pipe poisoned").bytes.clone()
    }

    /// Whether more than the limit was written.
    pub fn exceeded(&self) -> bool {
        self.0.lock().expect("pipe poisoned").exceeded
    }

    fn write(&self, data: &[u8]) -> Result<(), ()> {
        self.0.lock().expect("pipe poisoned").write(data)
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        CappedPipe::write(self, &bytes).map_err(|()| StreamError::trap("output size limit exceeded"))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(
            CappedPipe::write(&self, buf)
                .map(|()| buf.len())
                .map_err(|()| io::Error::other("output size limit exceeded")),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_pipe_keeps_what_fit_and_remembers_the_overflow() {
        let pipe = CappedPipe::failing_after(5);
        assert!(pipe.write(b"abc").is_ok());
        assert!(pipe.write(b"def").is_err());
        assert_eq!(pipe.contents(), b"abc");
        assert!(pipe.exceeded());
    }

    #[test]
    fn a_tail_pipe_keeps_the_last_bytes_and_never_fails() {
        let pipe = CappedPipe::keeping_tail(4);
        assert!(pipe.write(b"hello ").is_ok());
        assert!(pipe.write(b"world").is_ok());
        assert_eq!(pipe.contents(), b"orld");
    }
}
