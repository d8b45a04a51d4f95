//! Local control of a running daemon: `wasmgrid status`, `suspend`, `resume`, `set` and
//! `detach` talk to it over a socket in the data directory. Each connection carries one
//! request and its reply, one JSON line each way.
//!
//! Only the volunteer's own user may use it (and root, who could anyway): on Unix the
//! socket is a Unix socket, private to the user (mode 0600, in a directory of mode 0700),
//! and the daemon checks the peer's credentials too, since a socket's mode is not honoured
//! everywhere. Windows has no Unix sockets that every version supports, so there the daemon
//! listens on loopback and writes its port and a random token to a file in the data
//! directory, which only the user can read; a request must start with the token.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::data_dir::DataDir;
use crate::status::StatusReport;

/// Longest request a daemon reads.
const MAX_REQUEST_BYTES: u64 = 64 << 10;
/// Longest reply a command reads (a status with thousands of tasks).
const MAX_REPLY_BYTES: u64 = 64 << 20;
/// How long the daemon waits for a request (one short line, written at once) and for the
/// peer to take its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command waits for the daemon's reply (its loop may be in an exchange with a
/// server).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Suspend computing, for a while or until `resume`.
    Suspend {
        for_seconds: Option<u64>,
    },
    /// End a suspension by `suspend` (the preferences may still suspend computing).
    Resume,
    /// Change a setting, in `client.toml` and at once.
    Set {
        key: String,
        value: String,
    },
    /// Detach from a project, abandoning its tasks.
    Detach {
        project_url: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status(Box<StatusReport>),
    /// Done; the message says what changed.
    Done {
        message: String,
    },
    Refused {
        error: String,
    },
}

/// Sends `request` to the daemon running on `data_dir`; `None` when no daemon listens.
pub async fn send(data_dir: &DataDir, request: &Request) -> anyhow::Result<Option<Reply>> {
    let Some(mut stream) = transport::connect(data_dir).await else { return Ok(None) };
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let exchange = async {
        stream.write_all(&line).await?;
        stream.flush().await?;
        let mut reply = Vec::new();
        (&mut stream).take(MAX_REPLY_BYTES).read_to_end(&mut reply).await?;
        anyhow::Ok(reply)
    };
    let reply = tokio::time::timeout(REPLY_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("the daemon did not answer within {} s", REPLY_TIMEOUT.as_secs()))??;
    let reply = serde_json::from_slice(&reply).map_err(|error| anyhow::anyhow!("the daemon's answer: {error}"))?;
    Ok(Some(reply))
}

/// The daemon's end: accepts connections and reads their requests.
pub struct Listener {
    inner: transport::Listener,
}

/// One accepted connection, its request not yet read.
pub struct Connection {
    stream: transport::Stream,
    /// Why the peer may not use the socket, if it may not.
    refused: Option<String>,
}

impl Listener {
    /// Listens for requests on `data_dir`, replacing what a daemon that died left behind.
    pub fn bind(data_dir: &DataDir) -> anyhow::Result<Self> {
        Ok(Self { inner: transport::Listener::bind(data_dir)? })
    }

    pub async fn accept(&self) -> std::io::Result<Connection> {
        let (stream, refused) = self.inner.accept().await?;
        Ok(Connection { stream, refused })
    }

    /// Removes the socket (or the file naming the port), once the daemon stops.
    pub fn remove(&self, data_dir: &DataDir) {
        transport::remove(data_dir);
    }
}

impl Connection {
    /// The peer's request; an error is sent back as the reply.
    pub async fn read_request(&mut self) -> Result<Request, String> {
        let mut line = Vec::new();
        let mut reader = BufReader::new(&mut self.stream).take(MAX_REQUEST_BYTES);
        let read = reader.read_until(b'\n', &mut line);
        match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(format!("cannot read the request: {error}")),
            Err(_) => return Err("no request arrived in time".to_owned()),
        }
        // Refused only once the request is read: closing with it unread would reset the
        // connection, and the peer would never see why.
        if let Some(why) = &self.refused {
            return Err(why.clone());
        }
        let line = transport::check_token(&line)?;
        serde_json::from_slice(line).map_err(|error| format!("not a request: {error}"))
    }

    pub async fn reply(mut self, reply: &Reply) {
        if let Ok(json) = serde_json::to_vec(reply) {
            let sent = async {
                self.stream.write_all(&json).await?;
                self.stream.shutdown().await
            };
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, sent).await;
        }
    }
}

#[cfg(unix)]
mod transport {
    use tokio::net::{UnixListener, UnixStream};

    use crate::data_dir::DataDir;

    pub type Stream = UnixStream;

    pub struct Listener(UnixListener);

    impl Listener {
        pub fn bind(data_dir: &DataDir) -> anyhow::Result<Self> {
            use std::os::unix::fs::PermissionsExt;
            let path = data_dir.control_socket();
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            Ok(Self(listener))
        }

        /// A connection, and why its peer may not use it, if it may not.
        pub async fn accept(&self) -> std::io::Result<(Stream, Option<String>)> {
            let (stream, _) = self.0.accept().await?;
            // SAFETY: always safe to call.
            let own = unsafe { libc::geteuid() };
            let refused = match stream.peer_cred() {
                Ok(peer) if peer.uid() == own || peer.uid() == 0 => None,
                Ok(peer) => {
                    Some(format!("only the user the daemon runs as (uid {own}) may control it, not uid {}", peer.uid()))
                }
                Err(error) => Some(format!("cannot tell who is asking: {error}")),
            };
            if let Some(why) = &refused {
                tracing::warn!("refused a control request: {why}");
            }
            Ok((stream, refused))
        }
    }

    pub async fn connect(data_dir: &DataDir) -> Option<super::transport::Stream> {
        UnixStream::connect(data_dir.control_socket()).await.ok()
    }

    /// The peer's credentials were checked on accept: the line is the request.
    pub fn check_token(line: &[u8]) -> Result<&[u8], String> {
        Ok(line)
    }

    pub fn remove(data_dir: &DataDir) {
        let _ = std::fs::remove_file(data_dir.control_socket());
    }
}

#[cfg(windows)]
mod transport {
    use serde::{Deserialize, Serialize};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use crate::data_dir::DataDir;

    pub type Stream = TcpStream;

    /// What the file in the data directory says: where the daemon listens, and the secret
    /// a request must start with.
    #[derive(Serialize, Deserialize)]
    struct Endpoint {
        port: u16,
        token: String,
    }

    pub struct Listener {
        listener: TcpListener,
    }

    /// The token of this process's daemon, checked on every request.
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

    impl Listener {
        pub fn bind(data_dir: &DataDir) -> anyhow::Result<Self> {
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
            listener.set_nonblocking(true)?;
            let token = TOKEN
                .get_or_init(|| rand::random::<[u8; 32]>().iter().map(|byte| format!("{byte:02x}")).collect())
                .clone();
            let endpoint = Endpoint { port: listener.local_addr()?.port(), token };
            crate::data_dir::write_atomically(&data_dir.control_socket(), &serde_json::to_vec(&endpoint)?)?;
            Ok(Self { listener: TcpListener::from_std(listener)? })
        }

        pub async fn accept(&self) -> std::io::Result<(Stream, Option<String>)> {
            let (stream, _) = self.listener.accept().await?;
            Ok((stream, None))
        }
    }

    pub async fn connect(data_dir: &DataDir) -> Option<Stream> {
        let endpoint: Endpoint = serde_json::from_slice(&std::fs::read(data_dir.control_socket()).ok()?).ok()?;
        let mut stream = TcpStream::connect(("127.0.0.1", endpoint.port)).await.ok()?;
        stream.write_all(format!("{} ", endpoint.token).as_bytes()).await.ok()?;
        Some(stream)
    }

    /// The request line is the token, a space, and the request.
    pub fn check_token(line: &[u8]) -> Result<&[u8], String> {
        let expected = TOKEN.get().ok_or("no token")?;
        let (token, request) = line.split_at(line.iter().position(|&byte| byte == b' ').unwrap_or(line.len()));
        // Every byte compared, so the time taken says nothing of how much matched.
        let matches = token.len() == expected.len()
            && token.iter().zip(expected.as_bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0;
        if !matches {
            return Err("wrong token: only the user the daemon runs as may control it".to_owned());
        }
        Ok(request.get(1..).unwrap_or_default())
    }

    pub fn remove(data_dir: &DataDir) {
        let _ = std::fs::remove_file(data_dir.control_socket());
    }
}
