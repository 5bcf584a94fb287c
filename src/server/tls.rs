//! TLS for server connections: rustls' unbuffered API driven by hand on the non-blocking
//! socket, and the loading of the certificate and key. Owns one connection's TLS state
//! (records in, plaintext out; plaintext in, records out); must not know about WebSocket
//! frames, sockets or deadlines.
//!
//! Why the unbuffered API: the buffered `ServerConnection` keeps its own receive buffer
//! (grown to a full 16 KiB record by the first large message and never shrunk) plus plaintext
//! queues in every connection. Here ciphertext is read into the shard's read buffer and
//! decrypted there; a connection keeps only an unfinished record (in its `Stash`), an
//! unfinished frame head (`plain`) and unsent records (`out`), each freed once empty. An idle
//! TLS connection thus holds the rustls state and its two traffic keys, nothing more.

use std::fmt;
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use rustls::ServerConfig;

use super::conn::Stash;

/// Records sealed per round before they are written out. Sealing only a little ahead of the
/// socket keeps a blocked connection's ciphertext small (at most about this much): the rest of
/// its queue stays plaintext, where a broadcast frame is one shared chunk for every subscriber.
pub(crate) const SEAL_BUDGET: usize = 32 << 10;

/// A start-up failure of `--tls-cert` / `--tls-key`.
#[derive(Debug)]
pub enum TlsSetupError {
    Read(PathBuf, io::Error),
    NoCertificate(PathBuf),
    BadCertificate(PathBuf, String),
    NoKey(PathBuf),
    BadKey(PathBuf, String),
    /// rustls refused the pair (e.g. the key does not match the certificate).
    Rejected(rustls::Error),
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            Self::NoCertificate(p) => write!(
                f,
                "no certificate in {} (expected a PEM \"BEGIN CERTIFICATE\" section)",
                p.display()
            ),
            Self::BadCertificate(p, e) => {
                write!(f, "bad certificate PEM in {}: {e}", p.display())
            }
            Self::NoKey(p) => write!(
                f,
                "no private key in {} (expected a PEM PKCS#8, PKCS#1 or SEC1 private key)",
                p.display()
            ),
            Self::BadKey(p, e) => write!(f, "bad private key PEM in {}: {e}", p.display()),
            Self::Rejected(rustls::Error::InconsistentKeys(e)) => write!(
                f,
                "the TLS key does not match the certificate ({e:?}); check --tls-key belongs to --tls-cert"
            ),
            Self::Rejected(e) => write!(f, "TLS certificate or key refused: {e}"),
        }
    }
}

impl std::error::Error for TlsSetupError {}

/// Loads a PEM certificate chain and private key into a server config: TLS 1.2 and 1.3 with
/// the `ring` provider, ALPN `http/1.1`, no session resumption (no per-server ticket state).
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| TlsSetupError::Read(p.to_owned(), e));
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::BadCertificate(cert.to_owned(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate(cert.to_owned()));
    }
    let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsSetupError::NoKey(key.to_owned()))
        }
        Err(e) => return Err(TlsSetupError::BadKey(key.to_owned(), e.to_string())),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rejected)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(TlsSetupError::Rejected)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// What the peer's records amounted to.
#[derive(Debug)]
pub(crate) enum TlsInput {
    /// Processed; more may come.
    More,
    /// The peer sent close_notify: treat as end of input.
    PeerClosed,
    /// A TLS error; a fatal alert, when rustls made one, is queued in `out`.
    Failed(rustls::Error),
}

/// One connection's TLS state, boxed in the shard's side table under the connection's slab key
/// (a plaintext connection has none and its slab entry does not grow for TLS).
pub(crate) struct TlsConn {
    conn: UnbufferedServerConnection,
    /// Ciphertext not yet consumed: an unfinished record, and the parts of an unfinished
    /// handshake message rustls decrypted in place and refers to by offset. Every call into
    /// rustls must be given these bytes (never an empty buffer while they exist), and they
    /// are kept across reads until rustls discards them.
    pub incoming: Stash,
    /// Decrypted bytes not yet consumed: an unfinished request head or frame head.
    pub plain: Stash,
    /// Records not yet written to the socket; empty (unallocated) when caught up.
    pub out: Vec<u8>,
    /// close_notify has been queued: nothing may be sealed after it.
    pub notify_sent: bool,
    /// A TLS error occurred: nothing more may be sealed.
    pub failed: bool,
}

impl TlsConn {
    pub fn new(cfg: &Arc<ServerConfig>) -> Result<Box<Self>, rustls::Error> {
        Ok(Box::new(Self {
            conn: UnbufferedServerConnection::new(cfg.clone())?,
            incoming: Stash::default(),
            plain: Stash::default(),
            out: Vec::new(),
            notify_sent: false,
            failed: false,
        }))
    }

    /// Bytes queued for the socket.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Runs the peer's records in `data` (decrypted in place): application data is appended to
    /// `plain`, handshake answers to `self.out`. Returns the bytes of `data` consumed (the rest
    /// is an unfinished record to keep) and what the input amounted to.
    pub fn read(&mut self, data: &mut [u8], plain: &mut Vec<u8>) -> (usize, TlsInput) {
        let mut pos = 0;
        loop {
            let status = self.conn.process_tls_records(&mut data[pos..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(s) => s,
                Err(e) => {
                    pos += discard;
                    pos += self.fail(&mut data[pos..]);
                    return (pos, TlsInput::Failed(e));
                }
            };
            match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        match rec {
                            Ok(rec) => {
                                plain.extend_from_slice(rec.payload);
                                discard += rec.discard;
                            }
                            Err(e) => {
                                pos += discard;
                                pos += self.fail(&mut data[pos..]);
                                return (pos, TlsInput::Failed(e));
                            }
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut enc) => {
                    if let Err(e) = encode(&mut enc, &mut self.out) {
                        pos += discard;
                        self.failed = true;
                        return (pos, TlsInput::Failed(e));
                    }
                }
                // The records are in `out`, written in order before anything sealed later.
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                    // Nothing left to process but an unfinished record.
                    return (pos + discard, TlsInput::More);
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return (pos + discard, TlsInput::PeerClosed);
                }
                _ => {
                    // Early data is not enabled; any other state is unexpected.
                    pos += discard;
                    self.failed = true;
                    return (
                        pos,
                        TlsInput::Failed(rustls::Error::General("unexpected TLS state".into())),
                    );
                }
            }
            pos += discard;
        }
    }

    /// After an error, queues the fatal alert rustls prepared, if any. `rest` is the input
    /// not consumed yet: rustls may hold offsets into it, so it must be given (an empty buffer
    /// makes it panic). One call only: a queued alert comes back before rustls looks at the
    /// input again, while a second call would parse the bad input again (and raise a second
    /// alert). Returns how much of `rest` rustls discarded.
    fn fail(&mut self, rest: &mut [u8]) -> usize {
        self.failed = true;
        let status = self.conn.process_tls_records(rest);
        let discard = status.discard;
        if let Ok(ConnectionState::EncodeTlsData(mut enc)) = status.state {
            let _ = encode(&mut enc, &mut self.out);
        }
        discard
    }

    /// Seals `data` into records appended to `out`; `close_notify` instead of data when
    /// `data` is None.
    fn seal(&mut self, data: Option<&[u8]>, out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        if self.failed || self.notify_sent {
            return Err(rustls::Error::General(
                "TLS connection closed for writing".into(),
            ));
        }
        // rustls is handed the kept ciphertext (it may hold offsets into it) and may discard
        // a prefix of it.
        let mut incoming = self.incoming.take();
        let mut used = 0;
        let r = self.seal_with(
            data,
            out,
            incoming.as_deref_mut().map_or(&mut [][..], |v| &mut v[..]),
            &mut used,
        );
        if let Some(v) = incoming.as_mut() {
            v.drain(..used.min(v.len()));
        }
        if let Some(v) = incoming {
            self.incoming.set(v);
        }
        r
    }

    fn seal_with(
        &mut self,
        data: Option<&[u8]>,
        out: &mut Vec<u8>,
        incoming: &mut [u8],
        used: &mut usize,
    ) -> Result<(), rustls::Error> {
        loop {
            let status = self.conn.process_tls_records(&mut incoming[*used..]);
            *used += status.discard;
            match status.state? {
                ConnectionState::EncodeTlsData(mut enc) => encode(&mut enc, out)?,
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::PeerClosed => continue,
                ConnectionState::WriteTraffic(mut w) => {
                    let need = data.map_or(64, |d| d.len() + (d.len() / 4096 + 1) * 64);
                    let start = out.len();
                    out.resize(start + need, 0);
                    let r = match data {
                        Some(d) => w.encrypt(d, &mut out[start..]),
                        None => w.queue_close_notify(&mut out[start..]),
                    };
                    return match r {
                        Ok(n) => {
                            out.truncate(start + n);
                            if data.is_none() {
                                self.notify_sent = true;
                            }
                            Ok(())
                        }
                        Err(EncryptError::InsufficientSize(s)) => {
                            out.resize(start + s.required_size, 0);
                            let r = match data {
                                Some(d) => w.encrypt(d, &mut out[start..]),
                                None => w.queue_close_notify(&mut out[start..]),
                            };
                            match r {
                                Ok(n) => {
                                    out.truncate(start + n);
                                    if data.is_none() {
                                        self.notify_sent = true;
                                    }
                                    Ok(())
                                }
                                Err(e) => {
                                    out.truncate(start);
                                    Err(rustls::Error::General(e.to_string()))
                                }
                            }
                        }
                        Err(e) => {
                            out.truncate(start);
                            self.failed = true;
                            Err(rustls::Error::General(e.to_string()))
                        }
                    };
                }
                _ => {
                    return Err(rustls::Error::General(
                        "TLS connection cannot send application data".into(),
                    ))
                }
            }
        }
    }

    /// Seals application data into `out`.
    pub fn seal_data(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        if data.is_empty() {
            return Ok(());
        }
        self.seal(Some(data), out)
    }

    /// Seals a close_notify alert into `out` (once).
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        self.seal(None, out)
    }
}

/// Appends an encoded handshake record.
fn encode<D>(
    enc: &mut rustls::unbuffered::EncodeTlsData<'_, D>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    out.resize(start + 4096, 0);
    let r = match enc.encode(&mut out[start..]) {
        Err(EncodeError::InsufficientSize(s)) => {
            out.resize(start + s.required_size, 0);
            enc.encode(&mut out[start..])
        }
        r => r,
    };
    match r {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(rustls::Error::General(e.to_string()))
        }
    }
}

/// A `Write` that seals what the write queue hands it into records, up to a budget: the queue
/// drains into ciphertext that the shard then writes to the socket. Past the budget it
/// reports `WouldBlock`, so the queue keeps the rest (and its shared chunks) as they are.
pub(crate) struct Sealer<'a> {
    pub tls: &'a mut TlsConn,
    pub out: &'a mut Vec<u8>,
    /// Scratch for gathering a writev's slices into one plaintext run.
    pub gather: &'a mut Vec<u8>,
    pub error: Option<rustls::Error>,
}

impl Sealer<'_> {
    fn full(&self) -> bool {
        self.out.len() >= SEAL_BUDGET
    }

    fn sealed(&mut self, r: Result<(), rustls::Error>, n: usize) -> io::Result<usize> {
        match r {
            Ok(()) => Ok(n),
            Err(e) => {
                let msg = e.to_string();
                self.error = Some(e);
                Err(io::Error::other(msg))
            }
        }
    }
}

impl Write for Sealer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.full() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(SEAL_BUDGET);
        let r = self.tls.seal_data(&buf[..n], self.out);
        self.sealed(r, n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.full() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.gather.clear();
        for b in bufs {
            let room = SEAL_BUDGET - self.gather.len();
            if room == 0 {
                break;
            }
            self.gather.extend_from_slice(&b[..b.len().min(room)]);
        }
        let n = self.gather.len();
        let r = self.tls.seal_data(self.gather, self.out);
        self.sealed(r, n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
