//! The client side of the Scalability Protocols' REQ/REP v0 over TCP, TLS
//! and Unix-domain sockets (NNG's `tcp://`, `tls+tcp://` and `ipc://`),
//! written here instead of bound from libnng (README.md says why).
//!
//! `tls+tcp://` is the TCP mapping inside a TLS stream (rustls): the TLS
//! handshake first, then the greeting and messages as over TCP.
//!
//! On the wire, after connecting, each side sends an 8-byte greeting
//! `00 'S' 'P' 00`, its protocol id (16-bit big-endian: REQ0 48, REP0 49) and
//! two zero bytes. Every message then travels as a 64-bit big-endian length
//! and that many bytes (ipc:// puts a message-type byte 0x01 before the
//! length). A REQ message starts with a 32-bit big-endian request id whose
//! high bit is set; REP sends it back at the start of the reply.
//!
//! Several requests may be in flight on one connection, each under its own
//! id ([`Pipe::send`], then [`Pipe::recv`] until each id is answered): the
//! daemon's REP socket serves them in parallel contexts (up to its
//! `--max-in-flight`) and its replies may come in any order. A sliced step
//! uses this; every other call has one request in flight
//! ([`Pipe::request`]).

use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::error::{Error, Result};
use crate::wire::Message;

const PROTO_REQ0: u16 = 48;
const PROTO_REP0: u16 = 49;

// Body bytes read per step: a length from the peer is not trusted with an
// allocation until the bytes arrive.
const READ_CHUNK: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Address {
    Tcp(String),
    Tls(String),
    Ipc(PathBuf),
}

pub(crate) fn parse_url(url: &str) -> Result<Address> {
    if let Some(rest) = url.strip_prefix("tcp://") {
        // NNG's URLs: tcp://host:port, IPv6 hosts in brackets, which is
        // also what ToSocketAddrs wants.
        if rest.is_empty() || !rest.contains(':') {
            return Err(Error::invalid(format!("{url}: expected tcp://HOST:PORT")));
        }
        Ok(Address::Tcp(rest.to_owned()))
    } else if let Some(rest) = url.strip_prefix("tls+tcp://") {
        if rest.is_empty() || !rest.contains(':') {
            return Err(Error::invalid(format!("{url}: expected tls+tcp://HOST:PORT")));
        }
        Ok(Address::Tls(rest.to_owned()))
    } else if let Some(rest) = url.strip_prefix("ipc://") {
        if rest.is_empty() {
            return Err(Error::invalid(format!("{url}: expected ipc:///PATH")));
        }
        Ok(Address::Ipc(PathBuf::from(rest)))
    } else {
        Err(Error::invalid(format!("{url}: only tcp://, tls+tcp:// and ipc:// URLs are supported")))
    }
}

/// TLS settings for `tls+tcp://` URLs: the CA the daemon's certificate
/// must chain to and, for a daemon that requires one, this client's
/// certificate. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

fn tls_error(what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("TLS: {what}"))
}

impl TlsConfig {
    /// From PEM files: `ca`, the certificate(s) the daemon's certificate
    /// must chain to, and `client`, this client's certificate (chain) and
    /// private key, where the daemon asks for one. TLS 1.2 and 1.3, with
    /// rustls' ring provider.
    pub fn from_pem_files(ca: impl AsRef<Path>, client: Option<(&Path, &Path)>) -> Result<TlsConfig> {
        let ca = ca.as_ref();
        let mut roots = RootCertStore::empty();
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| tls_error(format!("CA {}: {e}", ca.display())))? {
            let cert = cert.map_err(|e| tls_error(format!("CA {}: {e}", ca.display())))?;
            roots.add(cert).map_err(|e| tls_error(format!("CA {}: {e}", ca.display())))?;
            n += 1;
        }
        if n == 0 {
            return Err(tls_error(format!("CA {}: no PEM certificate in it", ca.display())));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| tls_error(format!("client certificate {}: {e}", cert.display())))?;
                if chain.is_empty() {
                    return Err(tls_error(format!("client certificate {}: no PEM certificate in it", cert.display())));
                }
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| tls_error(format!("client key {}: {e}", key.display())))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| tls_error(format!("client certificate: {e}")))?
            }
        };
        Ok(TlsConfig { config: Arc::new(config), server_name: None })
    }

    /// A rustls configuration made by the caller (its own roots, verifier,
    /// provider or client certificate resolver).
    pub fn from_rustls(config: Arc<ClientConfig>) -> TlsConfig {
        TlsConfig { config, server_name: None }
    }

    /// The name the daemon's certificate must carry; by default the URL's
    /// host (an IP address is matched against the certificate's IP SANs).
    pub fn server_name(mut self, name: impl Into<String>) -> TlsConfig {
        self.server_name = Some(name.into());
        self
    }
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(hostport: &str) -> &str {
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Ipc(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(left))?;
                s.set_write_timeout(Some(left))
            }
            Stream::Tls(s) => {
                s.sock.set_read_timeout(Some(left))?;
                s.sock.set_write_timeout(Some(left))
            }
            Stream::Ipc(s) => {
                s.set_read_timeout(Some(left))?;
                s.set_write_timeout(Some(left))
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Ipc(s) => s.read(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            // rustls copies into records anyway; flushing is what puts them
            // on the wire.
            Stream::Tls(s) => s.write_vectored(bufs).and_then(|n| s.flush().map(|()| n)),
            Stream::Ipc(s) => s.write_vectored(bufs),
        }
    }
}

const REFUSED_HINT: &str = ": most likely it refused this client's certificate \
                            (none given, or not signed by the CA the daemon trusts)";

/// Whether a failed handshake looks like the daemon turning this client
/// away: the connection dropped, or an alert about our certificate.
fn refused_by_daemon(e: &io::Error) -> bool {
    use rustls::AlertDescription as A;
    if matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    ) {
        return true;
    }
    matches!(
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            A::UnknownCA | A::CertificateRequired | A::BadCertificate | A::CertificateUnknown | A::AccessDenied
        ))
    )
}

/// The TLS handshake over `sock`, bounded by `deadline`; a failure says
/// that it was the handshake and why (rustls' reason: an unknown issuer, a
/// name mismatch, an alert from the daemon).
fn tls_handshake(
    mut sock: TcpStream,
    hostport: &str,
    tls: &TlsConfig,
    deadline: Instant,
) -> Result<StreamOwned<ClientConnection, TcpStream>> {
    let name = tls.server_name.as_deref().unwrap_or_else(|| host_of(hostport)).to_owned();
    let server_name = ServerName::try_from(name.clone()).map_err(|e| tls_error(format!("server name {name:?}: {e}")))?;
    let mut conn = ClientConnection::new(tls.config.clone(), server_name).map_err(tls_error)?;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out in the TLS handshake").into());
        }
        sock.set_read_timeout(Some(left))?;
        sock.set_write_timeout(Some(left))?;
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("TLS handshake with {hostport}: the daemon closed the connection{REFUSED_HINT}"),
                )
                .into())
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let e = timeout_kind(e);
                if e.kind() == io::ErrorKind::TimedOut {
                    return Err(io::Error::new(e.kind(), "timed out in the TLS handshake").into());
                }
                let hint = if refused_by_daemon(&e) { REFUSED_HINT } else { "" };
                return Err(io::Error::new(e.kind(), format!("TLS handshake with {hostport}: {e}{hint}")).into());
            }
        }
    }
    Ok(StreamOwned::new(conn, sock))
}

// A socket timeout surfaces as WouldBlock on Unix; callers see TimedOut.
fn timeout_kind(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "timed out")
    } else {
        e
    }
}

/// One connection to a REP socket.
pub(crate) struct Pipe {
    stream: Stream,
    ipc: bool,
}

impl Pipe {
    pub(crate) fn connect(addr: &Address, tls: Option<&TlsConfig>, deadline: Instant) -> Result<Pipe> {
        let stream = match addr {
            Address::Tcp(hostport) | Address::Tls(hostport) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{hostport}: no address"));
                let mut found = None;
                for sa in hostport.to_socket_addrs()? {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        last = io::Error::new(io::ErrorKind::TimedOut, "timed out connecting");
                        break;
                    }
                    match TcpStream::connect_timeout(&sa, left) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                // Requests are written whole; Nagle would only hold back
                // the tail of one while the daemon waits for it.
                s.set_nodelay(true)?;
                if let Address::Tls(_) = addr {
                    let tls = tls.ok_or_else(|| Error::invalid("a tls+tcp:// URL needs a TlsConfig"))?;
                    Stream::Tls(Box::new(tls_handshake(s, hostport, tls, deadline)?))
                } else {
                    Stream::Tcp(s)
                }
            }
            Address::Ipc(path) => Stream::Ipc(UnixStream::connect(path)?),
        };
        let mut pipe = Pipe { stream, ipc: matches!(addr, Address::Ipc(_)) };
        match pipe.handshake(deadline) {
            // A daemon that refuses the client's certificate does so after
            // the client's side of a TLS 1.3 handshake is done: the refusal
            // (an alert, or a closed connection) meets the SP greeting.
            Err(Error::Transport(e)) if matches!(pipe.stream, Stream::Tls(_)) && e.kind() != io::ErrorKind::TimedOut => {
                Err(Error::Transport(io::Error::new(
                    e.kind(),
                    format!("TLS: the daemon ended the connection before the SP greeting ({e}){REFUSED_HINT}"),
                )))
            }
            Err(e) => Err(e),
            Ok(()) => Ok(pipe),
        }
    }

    fn handshake(&mut self, deadline: Instant) -> Result<()> {
        let mut hello = [0u8, b'S', b'P', 0, 0, 0, 0, 0];
        hello[4..6].copy_from_slice(&PROTO_REQ0.to_be_bytes());
        self.write_all(&mut [IoSlice::new(&hello)], deadline)?;
        let mut peer = [0u8; 8];
        self.read_exact(&mut peer, deadline)?;
        if peer[0..4] != [0, b'S', b'P', 0] || peer[6..8] != [0, 0] {
            return Err(Error::protocol("the peer does not speak SP (bad greeting)"));
        }
        let proto = u16::from_be_bytes([peer[4], peer[5]]);
        if proto != PROTO_REP0 {
            return Err(Error::protocol(format!("the peer's SP protocol is {proto}, not REP0 (49)")));
        }
        Ok(())
    }

    fn write_all(&mut self, mut bufs: &mut [IoSlice<'_>], deadline: Instant) -> Result<()> {
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            self.stream.set_timeouts(deadline)?;
            match self.stream.write_vectored(bufs) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(timeout_kind(e).into()),
            }
        }
        Ok(())
    }

    fn read_exact(&mut self, mut buf: &mut [u8], deadline: Instant) -> Result<()> {
        while !buf.is_empty() {
            self.stream.set_timeouts(deadline)?;
            match self.stream.read(buf) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the peer").into())
                }
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(timeout_kind(e).into()),
            }
        }
        Ok(())
    }

    /// Sends `msg` as request `id` and returns the body of its reply.
    /// Replies to other ids (a request given up on earlier) are dropped, as
    /// NNG's REQ does. `max_recv` bounds a reply's size (0: no bound).
    pub(crate) fn request(&mut self, id: u32, msg: &Message<'_>, deadline: Instant, max_recv: u64) -> Result<Vec<u8>> {
        let id = self.send(id, msg, deadline)?;
        loop {
            let (rid, body) = self.recv(deadline, max_recv)?;
            if rid == id {
                return Ok(body);
            }
        }
    }

    /// Sends `msg` as request `id` without waiting for its reply; returns
    /// the id as it went on the wire (high bit set), which
    /// [`recv`](Self::recv) returns with the reply.
    pub(crate) fn send(&mut self, id: u32, msg: &Message<'_>, deadline: Instant) -> Result<u32> {
        let id = id | 0x8000_0000;
        let len = (msg.len() as u64 + 4).to_be_bytes();
        let mut head = Vec::with_capacity(13);
        if self.ipc {
            head.push(1u8);
        }
        head.extend_from_slice(&len);
        head.extend_from_slice(&id.to_be_bytes());
        let mut slices = Vec::with_capacity(8);
        slices.push(IoSlice::new(&head));
        slices.extend(msg.slices());
        self.write_all(&mut slices, deadline)?;
        Ok(id)
    }

    /// The next reply on the connection, whichever request it answers:
    /// its request id and body.
    pub(crate) fn recv(&mut self, deadline: Instant, max_recv: u64) -> Result<(u32, Vec<u8>)> {
        let mut hdr = [0u8; 9];
        let hdr = if self.ipc { &mut hdr[..] } else { &mut hdr[..8] };
        self.read_exact(hdr, deadline)?;
        if self.ipc && hdr[0] != 1 {
            return Err(Error::protocol(format!("ipc message type {} (expected 1)", hdr[0])));
        }
        let n = u64::from_be_bytes(hdr[hdr.len() - 8..].try_into().expect("8 bytes"));
        if n < 4 {
            return Err(Error::protocol("reply shorter than its request id"));
        }
        if max_recv > 0 && n - 4 > max_recv {
            return Err(Error::protocol(format!("reply of {} bytes exceeds the limit of {max_recv}", n - 4)));
        }
        let mut rid = [0u8; 4];
        self.read_exact(&mut rid, deadline)?;
        let n = usize::try_from(n - 4).map_err(|_| Error::protocol("reply too large for this machine"))?;
        let mut body = Vec::with_capacity(n.min(READ_CHUNK));
        while body.len() < n {
            let at = body.len();
            body.resize(at + (n - at).min(READ_CHUNK.max(at)), 0);
            self.read_exact(&mut body[at..], deadline)?;
        }
        Ok((u32::from_be_bytes(rid), body))
    }
}
