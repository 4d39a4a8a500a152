//! Batched UDP IO for the media workers: `epoll` to learn which of a worker's sockets have
//! data, `recvmmsg` to read everything a socket holds in one call, `sendmmsg` to send a
//! socket's datagrams of the tick in one call. Buffers are owned here and reused, so the
//! steady state allocates nothing. Linux only (this is what the gateway targets).
//!
//! The `unsafe` blocks are the libc calls; each says why it is sound. The invariants they
//! rely on are local: every pointer handed to the kernel points into a `Vec` owned by the
//! batch, sized before the call and not reallocated while the call runs.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::io::FromRawFd;

/// Largest datagram we read (RTP/RTCP of any sane peer is far below).
pub const MAX_DATAGRAM: usize = 2048;

/// An epoll instance, level-triggered, polled without waiting.
pub struct Poller {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    pub fn new(capacity: usize) -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a negative return is an error.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    /// Watches `fd` for input, reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event on our stack for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn remove(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; failure (fd not registered) is harmless and ignored.
        unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// The tokens of sockets with data now (no waiting). Returns how many are in `ready`.
    pub fn poll(&mut self, ready: &mut Vec<u64>) -> io::Result<usize> {
        ready.clear();
        let cap = i32::try_from(self.events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` holds `cap` initialised epoll_event slots the kernel may write.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), cap, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        ready.extend(self.events[..n].iter().map(|e| e.u64));
        Ok(n)
    }

    /// Room for this many ready sockets per poll.
    pub fn capacity(&self) -> usize {
        self.events.len()
    }
}

/// Buffers for one `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    pub fn new(n: usize) -> Self {
        let n = n.max(1);
        RecvBatch {
            bufs: vec![0u8; n * MAX_DATAGRAM],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: vec![unsafe { mem::zeroed() }; n],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                n
            ],
            // SAFETY: mmsghdr is plain old data (pointers and integers); zero is valid.
            hdrs: vec![unsafe { mem::zeroed() }; n],
        }
    }

    /// Reads up to the batch's size of datagrams from `fd` without blocking. Returns how
    /// many arrived (0 when there were none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.hdrs.len();
        for i in 0..n {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i * MAX_DATAGRAM..].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at an iovec and a sockaddr_storage owned by `self`,
        // each iovec at a distinct MAX_DATAGRAM-byte region of `bufs`; none of the Vecs is
        // touched until the call returns. MSG_DONTWAIT: never blocks.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(r as usize)
    }

    /// Datagram `i` of the last `recv`, and where it came from.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let len = (self.hdrs[i].msg_len as usize).min(MAX_DATAGRAM);
        let data = &self.bufs[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len];
        (data, from_storage(&self.addrs[i]))
    }
}

/// One datagram queued in a [`SendBatch`].
#[derive(Debug, Clone, Copy)]
struct Queued {
    fd: RawFd,
    offset: usize,
    len: usize,
}

/// The tick's datagrams, sent with one `sendmmsg` per socket.
pub struct SendBatch {
    data: Vec<u8>,
    queued: Vec<Queued>,
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    iovecs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Datagrams the kernel refused (logged by the caller).
    pub errors: u64,
    pub sent: u64,
    pub syscalls: u64,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            data: Vec::with_capacity(64 * 1024),
            queued: Vec::with_capacity(1024),
            addrs: Vec::with_capacity(1024),
            iovecs: Vec::with_capacity(64),
            hdrs: Vec::with_capacity(64),
            errors: 0,
            sent: 0,
            syscalls: 0,
        }
    }
}

impl SendBatch {
    pub fn push(&mut self, fd: RawFd, dest: SocketAddr, payload: &[u8]) {
        let offset = self.data.len();
        self.data.extend_from_slice(payload);
        self.queued.push(Queued {
            fd,
            offset,
            len: payload.len(),
        });
        self.addrs.push(to_storage(dest));
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends everything queued (consecutive datagrams of one socket in one `sendmmsg`),
    /// then empties the batch.
    pub fn flush(&mut self) {
        let mut start = 0;
        while start < self.queued.len() {
            let fd = self.queued[start].fd;
            let mut end = start + 1;
            while end < self.queued.len() && self.queued[end].fd == fd && end - start < 64 {
                end += 1;
            }
            self.send_group(fd, start, end);
            start = end;
        }
        self.data.clear();
        self.queued.clear();
        self.addrs.clear();
    }

    fn send_group(&mut self, fd: RawFd, start: usize, end: usize) {
        self.iovecs.clear();
        self.hdrs.clear();
        for q in &self.queued[start..end] {
            self.iovecs.push(libc::iovec {
                iov_base: self.data[q.offset..].as_ptr() as *mut libc::c_void,
                iov_len: q.len,
            });
        }
        for i in start..end {
            // SAFETY: mmsghdr is plain old data; zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i].0 as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.addrs[i].1;
            h.msg_hdr.msg_iov = &mut self.iovecs[i - start];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let mut done = 0;
        while done < self.hdrs.len() {
            let n = self.hdrs.len() - done;
            // SAFETY: the headers point at iovecs, addresses and bytes owned by `self`
            // that stay untouched until the call returns; the kernel only reads them (and
            // writes msg_len). MSG_DONTWAIT: a full socket buffer fails instead of blocking.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            self.syscalls += 1;
            if r <= 0 {
                // The first datagram failed: count it and go on with the rest.
                self.errors += 1;
                done += 1;
            } else {
                self.sent += r as u64;
                done += r as usize;
            }
        }
    }
}

fn to_storage(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address the kernel wrote into `s` (a datagram's source): IPv4 or IPv6, `None` for any
/// other family. Also used by the light load client (benches/loadgen.rs).
pub fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) into storage that is
            // large enough and aligned for it.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((s as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6 (family AF_INET6).
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((s as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Gives this thread real-time scheduling (SCHED_FIFO, the lowest real-time priority) so a
/// busy machine cannot delay its ticks; where that is not allowed, a nice of -10; where that
/// is not allowed either, nothing. Returns what it got. The media worker sleeps every tick,
/// so it cannot starve anything.
pub fn raise_priority() -> &'static str {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler reads one sched_param from the pointer; pid 0 = this thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        return "SCHED_FIFO";
    }
    // SAFETY: gettid has no arguments; setpriority takes integers (a tid for this thread).
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10)
    };
    if r == 0 {
        "nice -10"
    } else {
        "default"
    }
}

/// Asks the kernel to wake this thread's sleeps within `ns` of their deadline (default
/// 50 µs), for tick pacing.
pub fn set_timer_slack(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn batches_round_trip_over_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("[::1]:0");
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut poller = Poller::new(8).unwrap();
        poller.add(b.as_raw_fd(), 7).unwrap();
        let mut ready = Vec::new();
        assert_eq!(poller.poll(&mut ready).unwrap(), 0);

        let mut out = SendBatch::default();
        for i in 0..5u8 {
            out.push(a.as_raw_fd(), b_addr, &[i; 3]);
        }
        out.flush();
        assert_eq!((out.sent, out.syscalls, out.errors), (5, 1, 0));
        assert!(out.is_empty());

        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(poller.poll(&mut ready).unwrap(), 1);
        assert_eq!(ready, vec![7]);
        let mut rx = RecvBatch::new(4);
        assert_eq!(rx.recv(b.as_raw_fd()).unwrap(), 4);
        for i in 0..4 {
            assert_eq!(rx.get(i), (&[i as u8; 3][..], Some(a_addr)));
        }
        assert_eq!(rx.recv(b.as_raw_fd()).unwrap(), 1);
        assert_eq!(rx.recv(b.as_raw_fd()).unwrap(), 0, "drained: no blocking");
        poller.remove(b.as_raw_fd());

        // IPv6 addresses survive the conversions (when the machine has ::1).
        if let Ok(c) = c {
            let c_addr = c.local_addr().unwrap();
            let d = UdpSocket::bind("[::1]:0").unwrap();
            out.push(d.as_raw_fd(), c_addr, b"v6");
            out.flush();
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert_eq!(rx.recv(c.as_raw_fd()).unwrap(), 1);
            assert_eq!(rx.get(0), (&b"v6"[..], Some(d.local_addr().unwrap())));
        }
    }
}
