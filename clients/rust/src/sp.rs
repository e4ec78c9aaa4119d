//! The client side of the Scalability Protocols' REQ/REP v0 over TCP and
//! Unix-domain sockets (NNG's `tcp://` and `ipc://`), written here instead
//! of bound from libnng (README.md says why).
//!
//! On the wire, after connecting, each side sends an 8-byte greeting
//! `00 'S' 'P' 00`, its protocol id (16-bit big-endian: REQ0 48, REP0 49) and
//! two zero bytes. Every message then travels as a 64-bit big-endian length
//! and that many bytes (ipc:// puts a message-type byte 0x01 before the
//! length). A REQ message starts with a 32-bit big-endian request id whose
//! high bit is set; REP sends it back at the start of the reply.

use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Instant;

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
    } else if let Some(rest) = url.strip_prefix("ipc://") {
        if rest.is_empty() {
            return Err(Error::invalid(format!("{url}: expected ipc:///PATH")));
        }
        Ok(Address::Ipc(PathBuf::from(rest)))
    } else {
        Err(Error::invalid(format!("{url}: only tcp:// and ipc:// URLs are supported")))
    }
}

enum Stream {
    Tcp(TcpStream),
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
            Stream::Ipc(s) => {
                s.set_read_timeout(Some(left))?;
                s.set_write_timeout(Some(left))
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Ipc(s) => s.read(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Ipc(s) => s.write_vectored(bufs),
        }
    }
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
    pub(crate) fn connect(addr: &Address, deadline: Instant) -> Result<Pipe> {
        let stream = match addr {
            Address::Tcp(hostport) => {
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
                Stream::Tcp(s)
            }
            Address::Ipc(path) => Stream::Ipc(UnixStream::connect(path)?),
        };
        let mut pipe = Pipe { stream, ipc: matches!(addr, Address::Ipc(_)) };
        pipe.handshake(deadline)?;
        Ok(pipe)
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

        loop {
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
            if u32::from_be_bytes(rid) == id {
                return Ok(body);
            }
        }
    }
}
