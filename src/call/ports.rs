//! RTP port allocation: an even port for RTP and the next odd one for RTCP, from `rtp.ports`.

use std::net::UdpSocket;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, thiserror::Error)]
#[error("no free RTP port pair in {lo}-{hi}")]
pub struct NoFreePorts {
    pub lo: u16,
    pub hi: u16,
}

/// Hands out RTP/RTCP socket pairs, rotating through the range so a just-freed port is not
/// reused at once (late packets of the previous call would land in the new one).
pub struct PortAllocator {
    ip: IpAddr,
    lo: u16,
    hi: u16,
    cursor: AtomicU32,
}

impl PortAllocator {
    pub fn new(ip: IpAddr, lo: u16, hi: u16) -> Self {
        PortAllocator {
            ip,
            lo,
            hi,
            cursor: AtomicU32::new(0),
        }
    }

    /// Binds the next free even/odd pair (non-blocking sockets, handed to a media worker).
    pub fn allocate(&self) -> Result<(UdpSocket, UdpSocket), NoFreePorts> {
        let first_even = self.lo + (self.lo % 2);
        let pairs = ((self.hi.saturating_sub(first_even)) / 2 + 1) as u32;
        if self.hi <= first_even {
            return Err(NoFreePorts {
                lo: self.lo,
                hi: self.hi,
            });
        }
        for _ in 0..pairs {
            let n = self.cursor.fetch_add(1, Ordering::Relaxed) % pairs;
            let port = first_even + (n as u16) * 2;
            if port >= self.hi {
                continue;
            }
            let (Some(rtp), Some(rtcp)) = (self.bind(port), self.bind(port + 1)) else {
                continue;
            };
            return Ok((rtp, rtcp));
        }
        Err(NoFreePorts {
            lo: self.lo,
            hi: self.hi,
        })
    }
}

impl PortAllocator {
    fn bind(&self, port: u16) -> Option<UdpSocket> {
        let sock = UdpSocket::bind(SocketAddr::new(self.ip, port)).ok()?;
        sock.set_nonblocking(true).ok()?;
        Some(sock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_odd_and_exhaust_cleanly() {
        let a = PortAllocator::new("127.0.0.1".parse().unwrap(), 41000, 41003);
        let (r1, c1) = a.allocate().unwrap();
        let p = r1.local_addr().unwrap().port();
        assert_eq!(p % 2, 0);
        assert_eq!(c1.local_addr().unwrap().port(), p + 1);
        let (r2, _c2) = a.allocate().unwrap();
        assert_ne!(r2.local_addr().unwrap().port(), p);
        assert!(a.allocate().is_err());
        drop(r1);
        drop(c1);
        assert!(a.allocate().is_ok());
    }
}
