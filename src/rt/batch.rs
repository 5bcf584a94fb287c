//! Batched socket I/O for both reactors (the client's and the server's shards, `--io uring`):
//! one `io_uring_enter(2)` carries a turn's reads (or its writes) for every ready connection,
//! where the plain path makes one `recv(2)` or `send(2)` each. A load generator answering
//! hundreds of echoes per turn spends most of its time in those calls; batched, the syscall
//! entries and their user-space wrappers are paid once per turn (fanout-load echo, 1,000
//! connections: 9-13% more messages per second). Owns the ring; must not know about
//! connections, frames or queues.
//!
//! Every operation is submitted with `MSG_DONTWAIT`: the kernel then completes it during the
//! submission itself (bytes moved, or `-EAGAIN`) and never arms a poll or hands it to a worker
//! thread. `run` still waits for every completion before it returns, so no buffer is lent past
//! the call: the buffers stay plain borrows of the caller's memory.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring, Probe};

/// Operations per submission. A turn with more ready connections is run in several.
pub const BATCH: usize = 256;
/// Fewer operations than this go out as plain calls: a submission's fixed cost (the
/// request setup, an extra syscall when a turn both reads and writes) is only repaid over
/// several operations.
pub const MIN_BATCH: usize = 4;

/// One socket operation: read into, or write from, a caller's buffer.
pub enum Op<'a, 'b> {
    Recv(RawFd, &'a mut [u8]),
    /// A read that also takes the kernel's receive timestamp (`SO_TIMESTAMPNS`).
    RecvMsg(RawFd, &'a mut RecvMsg<'b>),
    Send(RawFd, &'a [u8]),
    /// A gathering write (a write queue's chunks, as `writev`).
    SendMsg(RawFd, &'a mut SendMsg<'b>),
}

/// A `sendmsg` of several slices (`writev` with `MSG_DONTWAIT`). The header's pointers are set
/// when it is used (`prepare`), while it is borrowed and cannot move.
pub struct SendMsg<'b> {
    iov: &'b [std::io::IoSlice<'b>],
    hdr: libc::msghdr,
}

impl<'b> SendMsg<'b> {
    pub fn new(iov: &'b [std::io::IoSlice<'b>]) -> Self {
        SendMsg {
            iov,
            // SAFETY: msghdr is plain data; all-zero is its empty value.
            hdr: unsafe { std::mem::zeroed() },
        }
    }

    fn prepare(&mut self) -> *const libc::msghdr {
        // SAFETY: as in `new`.
        self.hdr = unsafe { std::mem::zeroed() };
        // IoSlice is ABI-compatible with iovec on Unix (documented by std).
        self.hdr.msg_iov = self.iov.as_ptr() as *mut libc::iovec;
        self.hdr.msg_iovlen = self.iov.len() as _;
        &self.hdr
    }
}

/// `SO_TIMESTAMPNS` (asm-generic's `SO_TIMESTAMPNS_OLD`: a `struct timespec` of this ABI, 64-bit
/// here), also the control message's type; the libc crate does not name it for Linux.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
const SO_TIMESTAMPNS: libc::c_int = 35;

/// Asks the kernel to timestamp what this socket receives (software, at the receive path,
/// CLOCK_REALTIME). Unsupported on targets whose option number is not known here. When no
/// socket of the system had timestamps on, the kernel turns them on from a work queue: what
/// arrives in the first moments after may still come without one.
pub fn enable_rx_timestamps(fd: RawFd) -> io::Result<()> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ))]
    {
        super::set_int_option(fd, libc::SOL_SOCKET, SO_TIMESTAMPNS, 1)
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )))]
    {
        let _ = fd;
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Waits, up to `limit`, until the kernel stamps what TCP sockets receive, by sending a byte
/// over a loopback pair with timestamps on until one arrives stamped. Once a socket asks for
/// timestamps the kernel turns them on for the whole system from a work queue; segments
/// received before that come without one (a TCP socket then gets no timestamp at all), so a
/// client that wants every round trip timed by the kernel waits for this first. False if they
/// never came on (unsupported here, or the limit passed).
pub fn wait_rx_timestamps(limit: std::time::Duration) -> bool {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + limit;
    let pair = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| {
        let a = std::net::TcpStream::connect(l.local_addr()?)?;
        let (b, _) = l.accept()?;
        enable_rx_timestamps(b.as_raw_fd())?;
        Ok((a, b))
    });
    let Ok((mut a, b)) = pair else {
        return false;
    };
    loop {
        if a.write_all(b"t").is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let mut m = RecvMsg::new(&mut byte);
        let stamped = loop {
            match recv_msg(b.as_raw_fd(), &mut m) {
                Ok(1) => break m.timestamp_ns().is_some(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => return false,
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        };
        if stamped {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A `recvmsg` into `data` with room for the receive timestamp. The header's pointers are set
/// when it is used (`prepare`), while it is borrowed and cannot move.
pub struct RecvMsg<'b> {
    data: &'b mut [u8],
    iov: libc::iovec,
    hdr: libc::msghdr,
    /// Control messages (one timestamp needs 32 bytes), u64-aligned as cmsghdr wants.
    ctrl: [u64; 8],
}

impl<'b> RecvMsg<'b> {
    pub fn new(data: &'b mut [u8]) -> Self {
        RecvMsg {
            data,
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: msghdr is plain data; all-zero is its empty value.
            hdr: unsafe { std::mem::zeroed() },
            ctrl: [0; 8],
        }
    }

    fn prepare(&mut self) -> *mut libc::msghdr {
        self.iov = libc::iovec {
            iov_base: self.data.as_mut_ptr().cast(),
            iov_len: self.data.len(),
        };
        // SAFETY: as in `new`.
        self.hdr = unsafe { std::mem::zeroed() };
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        self.hdr.msg_control = self.ctrl.as_mut_ptr().cast();
        self.hdr.msg_controllen = std::mem::size_of_val(&self.ctrl) as _;
        &mut self.hdr
    }

    /// After the receive: the kernel's receive time of the last segment read, in
    /// nanoseconds since the Unix epoch, when the socket has timestamps enabled.
    pub fn timestamp_ns(&self) -> Option<u64> {
        #[cfg(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64"
        ))]
        {
            if self.hdr.msg_control.is_null() || self.hdr.msg_flags & libc::MSG_CTRUNC != 0 {
                return None;
            }
            // Walk a copy whose control pointer is `ctrl` where it is now (this value may have
            // moved since `prepare`), with the length the kernel wrote, capped to `ctrl`.
            // SAFETY: msghdr is plain data; zeroed is its empty value.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_control = self.ctrl.as_ptr() as *mut libc::c_void;
            // (size_t with glibc, socklen_t with musl)
            #[allow(clippy::unnecessary_cast)]
            let kernel_len = self.hdr.msg_controllen as usize;
            hdr.msg_controllen = kernel_len.min(std::mem::size_of_val(&self.ctrl)) as _;
            let want = std::mem::size_of::<libc::timespec>() as u32;
            // SAFETY: CMSG_FIRSTHDR / CMSG_NXTHDR return headers that lie within
            // msg_controllen bytes of `ctrl`; a header is used only when its cmsg_len says
            // its data holds a whole timespec, which CMSG_LEN places inside it.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET
                        && (*c).cmsg_type == SO_TIMESTAMPNS
                        && (*c).cmsg_len as usize >= libc::CMSG_LEN(want) as usize
                        && (c as usize - self.ctrl.as_ptr() as usize)
                            + libc::CMSG_LEN(want) as usize
                            <= hdr.msg_controllen as usize
                    {
                        let ts: libc::timespec =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                    }
                    c = libc::CMSG_NXTHDR(&hdr, c);
                }
            }
            None
        }
        #[cfg(not(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64"
        )))]
        None
    }
}

/// A plain (non-batched) `recvmsg` with MSG_DONTWAIT.
pub fn recv_msg(fd: RawFd, m: &mut RecvMsg<'_>) -> io::Result<usize> {
    let hdr = m.prepare();
    // SAFETY: `hdr` points into `m`, which is borrowed for the call, and at its buffers.
    let n = unsafe { libc::recvmsg(fd, hdr, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub struct Batch {
    /// Dropped when a submission fails: entries the kernel did not take go with it, so none
    /// can run later against buffers their callers have reused.
    ring: Option<IoUring>,
}

impl Batch {
    /// A ring for `BATCH` operations at a time; an error means io_uring is unavailable here
    /// (an old kernel, `kernel.io_uring_disabled`, a seccomp filter): use the plain calls.
    pub fn new() -> io::Result<Batch> {
        // Completions are reaped in the submitting call: no need to interrupt the task for
        // them (COOP_TASKRUN, Linux 5.19; without it on older kernels).
        let ring = match IoUring::builder().setup_coop_taskrun().build(BATCH as u32) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(BATCH as u32)?,
            Err(e) => return Err(e),
        };
        // IORING_OP_SEND and _RECV came in Linux 5.6, after io_uring itself (5.1); so did the
        // probe, whose failure means an older kernel too.
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if ![
            opcode::Recv::CODE,
            opcode::RecvMsg::CODE,
            opcode::Send::CODE,
            opcode::SendMsg::CODE,
        ]
        .iter()
        .all(|&op| probe.is_supported(op))
        {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without send/recv (Linux < 5.6)",
            ));
        }
        Ok(Batch { ring: Some(ring) })
    }

    /// False once a submission failed (see `run`).
    pub fn usable(&self) -> bool {
        self.ring.is_some()
    }

    /// Runs `ops` (at most `BATCH`) and writes each one's result to `out`, in order: bytes
    /// moved, or the error (`WouldBlock` when the socket had nothing to give or no room).
    /// Returns an error when the ring itself failed: then the operations whose `out` is still
    /// `None` did not run, the ring is gone (`usable` is false), and every later call returns
    /// an error without running anything: the caller makes the plain calls.
    pub fn run(
        &mut self,
        ops: &mut [Op<'_, '_>],
        out: &mut Vec<Option<io::Result<usize>>>,
    ) -> io::Result<()> {
        assert!(ops.len() <= BATCH, "at most BATCH operations per run");
        out.clear();
        out.resize_with(ops.len(), || None);
        let Some(ring) = self.ring.as_mut() else {
            return Err(io::Error::other("the io_uring failed earlier"));
        };
        let result = submit_all(ring, ops, out);
        if result.is_err() {
            // io_uring_enter fails only for a call that took no entry (a call that took some
            // returns their count), and what earlier calls took completed inline: no
            // operation is in flight. The entries it never took go with the ring.
            self.ring = None;
        }
        result
    }
}

fn submit_all(
    ring: &mut IoUring,
    ops: &mut [Op<'_, '_>],
    out: &mut [Option<io::Result<usize>>],
) -> io::Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    {
        let mut sq = ring.submission();
        for (i, op) in ops.iter_mut().enumerate() {
            let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
            let entry = match op {
                Op::Recv(fd, buf) => {
                    opcode::Recv::new(types::Fd(*fd), buf.as_mut_ptr(), len32(buf.len()))
                        .flags(flags)
                        .build()
                }
                Op::RecvMsg(fd, m) => opcode::RecvMsg::new(types::Fd(*fd), m.prepare())
                    .flags(flags as u32)
                    .build(),
                Op::Send(fd, buf) => {
                    opcode::Send::new(types::Fd(*fd), buf.as_ptr(), len32(buf.len()))
                        .flags(flags)
                        .build()
                }
                Op::SendMsg(fd, m) => opcode::SendMsg::new(types::Fd(*fd), m.prepare())
                    .flags(flags as u32)
                    .build(),
            }
            .user_data(i as u64);
            // SAFETY: the buffer outlives the operation: `run` borrows it until the
            // operation's completion is reaped below, and on any error the ring, with what
            // it did not take, is dropped before `run` returns.
            if unsafe { sq.push(&entry) }.is_err() {
                // Cannot happen: the queue holds BATCH entries and is empty here.
                return Err(io::Error::other("io_uring submission queue full"));
            }
        }
    }
    let mut done = 0;
    while done < ops.len() {
        match ring.submit_and_wait(ops.len() - done) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for cqe in ring.completion() {
            let i = cqe.user_data() as usize;
            let r = cqe.result();
            out[i] = Some(if r >= 0 {
                Ok(r as usize)
            } else {
                Err(io::Error::from_raw_os_error(-r))
            });
            done += 1;
        }
    }
    Ok(())
}

fn len32(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// Connected pairs: (the side the batch uses, nonblocking; the peer).
    fn pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        (0..n)
            .map(|_| {
                let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                let (b, _) = l.accept().unwrap();
                a.set_nonblocking(true).unwrap();
                (a, b)
            })
            .collect()
    }

    fn batch() -> Batch {
        Batch::new().expect("io_uring is available on the machines this project runs on")
    }

    #[test]
    fn reads_each_socket_into_its_own_buffer_and_says_which_had_nothing() {
        let mut socks = pairs(5);
        for (i, (_, peer)) in socks.iter_mut().enumerate() {
            if i != 2 {
                peer.write_all(format!("socket {i}").as_bytes()).unwrap();
            }
        }
        // The data is in (loopback delivers during write), so the reads complete at once.
        let mut bufs = vec![[0u8; 64]; 5];
        let mut ops: Vec<Op<'_, '_>> = socks
            .iter()
            .zip(bufs.iter_mut())
            .map(|((s, _), b)| Op::Recv(s.as_raw_fd(), &mut b[..]))
            .collect();
        let mut out = Vec::new();
        batch().run(&mut ops, &mut out).unwrap();
        drop(ops);
        for (i, r) in out.into_iter().enumerate() {
            let r = r.expect("every operation ran");
            if i == 2 {
                assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
            } else {
                let n = r.unwrap();
                assert_eq!(&bufs[i][..n], format!("socket {i}").as_bytes());
            }
        }
    }

    #[test]
    fn writes_reach_each_peer_and_a_short_buffer_takes_what_fits() {
        let socks = pairs(4);
        let msgs: Vec<Vec<u8>> = (0..4).map(|i| vec![b'a' + i as u8; 100 + i]).collect();
        let mut ops: Vec<Op<'_, '_>> = socks
            .iter()
            .zip(&msgs)
            .map(|((s, _), m)| Op::Send(s.as_raw_fd(), &m[..]))
            .collect();
        let mut out = Vec::new();
        let mut b = batch();
        b.run(&mut ops, &mut out).unwrap();
        for (i, ((_, peer), m)) in socks.iter().zip(&msgs).enumerate() {
            assert_eq!(out[i].as_ref().unwrap().as_ref().unwrap(), &m.len());
            let mut got = vec![0u8; m.len()];
            let mut peer = peer;
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, m);
        }
        // A socket whose buffers are full: the send takes part or nothing, never blocks.
        let (a, _peer) = &socks[0];
        let big = vec![7u8; 64 << 20];
        let mut sent = 0usize;
        loop {
            let mut ops = [Op::Send(a.as_raw_fd(), &big[..])];
            b.run(&mut ops, &mut out).unwrap();
            match out[0].take().unwrap() {
                Ok(n) => {
                    assert!(n > 0 && n < big.len(), "a partial write, not {n}");
                    sent += n;
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
            }
            assert!(
                sent < big.len(),
                "the peer never reads: the buffers must fill"
            );
        }
    }

    #[test]
    fn a_gathered_write_sends_its_slices_in_order() {
        let socks = pairs(2);
        let parts: [&[u8]; 3] = [b"one ", b"", b"two three"];
        let iov: Vec<std::io::IoSlice<'_>> =
            parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
        let mut m0 = SendMsg::new(&iov);
        let mut m1 = SendMsg::new(&iov[2..]);
        let mut ops = [
            Op::SendMsg(socks[0].0.as_raw_fd(), &mut m0),
            Op::SendMsg(socks[1].0.as_raw_fd(), &mut m1),
        ];
        let mut out = Vec::new();
        batch().run(&mut ops, &mut out).unwrap();
        assert_eq!(out[0].as_ref().unwrap().as_ref().unwrap(), &13);
        assert_eq!(out[1].as_ref().unwrap().as_ref().unwrap(), &9);
        let mut got = [0u8; 13];
        (&socks[0].1).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one two three");
        let mut got = [0u8; 9];
        (&socks[1].1).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"two three");
    }

    #[test]
    fn a_closed_peer_reads_as_eof_and_a_reset_one_fails_the_write_without_sigpipe() {
        let mut socks = pairs(2);
        let (eof_side, closed) = socks.remove(0);
        drop(closed);
        let (reset_side, reset) = socks.remove(0);
        socket2::SockRef::from(&reset)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(reset);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut buf = [0u8; 16];
        let mut ops = [
            Op::Recv(eof_side.as_raw_fd(), &mut buf[..]),
            Op::Send(reset_side.as_raw_fd(), b"after the reset"),
        ];
        let mut out = Vec::new();
        batch().run(&mut ops, &mut out).unwrap();
        assert_eq!(out[0].as_ref().unwrap().as_ref().unwrap(), &0, "EOF");
        let e = out[1].take().unwrap().unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e:?}"
        );
    }

    fn now_ns() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    #[test]
    fn receive_timestamps_come_with_batched_and_plain_reads_and_predate_the_read() {
        let mut socks = pairs(3);
        for (a, _) in &socks[..2] {
            enable_rx_timestamps(a.as_raw_fd()).unwrap();
        }
        // The first socket of the system to ask turns timestamping on for all, from a work
        // queue: wait until it is on.
        assert!(
            wait_rx_timestamps(std::time::Duration::from_secs(2)),
            "the kernel never stamped a received segment"
        );
        let before = now_ns();
        for (_, peer) in socks.iter_mut() {
            peer.write_all(b"stamped").unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        let after = now_ns();
        // Batched: two stamped sockets and one without timestamps enabled.
        let mut bufs = [[0u8; 16]; 3];
        let mut msgs: Vec<RecvMsg<'_>> =
            bufs.iter_mut().map(|b| RecvMsg::new(&mut b[..])).collect();
        let mut ops: Vec<Op<'_, '_>> = socks
            .iter()
            .zip(msgs.iter_mut())
            .map(|((s, _), m)| Op::RecvMsg(s.as_raw_fd(), m))
            .collect();
        let mut out = Vec::new();
        batch().run(&mut ops, &mut out).unwrap();
        drop(ops);
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(out[i].as_ref().unwrap().as_ref().unwrap(), &7);
            match (i, m.timestamp_ns()) {
                // Received during the write, 30 ms before this read.
                (0 | 1, Some(ts)) => assert!(ts >= before && ts <= after, "{before} {ts} {after}"),
                (2, None) => {}
                other => panic!("socket {}: timestamp {:?}", other.0, other.1),
            }
        }
        drop(msgs);
        assert_eq!(&bufs[0][..7], b"stamped");
        // Plain.
        socks[0].1.write_all(b"again").unwrap();
        let mut buf = [0u8; 16];
        let mut m = RecvMsg::new(&mut buf);
        assert_eq!(recv_msg(socks[0].0.as_raw_fd(), &mut m).unwrap(), 5);
        assert!(m
            .timestamp_ns()
            .is_some_and(|ts| ts >= after && ts <= now_ns()));
        let mut m = RecvMsg::new(&mut buf);
        let e = recv_msg(socks[0].0.as_raw_fd(), &mut m).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn after_the_ring_failed_nothing_runs_and_every_result_is_none() {
        let socks = pairs(1);
        let mut b = batch();
        b.ring = None; // as `run` leaves it after a failed io_uring_enter
        assert!(!b.usable());
        let mut ops = [Op::Send(socks[0].0.as_raw_fd(), b"never sent")];
        let mut out = Vec::new();
        assert!(b.run(&mut ops, &mut out).is_err());
        assert!(matches!(out[..], [None]));
    }

    #[test]
    fn nothing_to_run_is_no_submission() {
        let mut out = vec![Some(Ok(1))];
        batch().run(&mut [], &mut out).unwrap();
        assert!(out.is_empty());
    }
}
