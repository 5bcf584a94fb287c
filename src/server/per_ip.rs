//! Per-source-IP limits shared by every shard (SO_REUSEPORT spreads one address's connections
//! over all of them): concurrent WebSocket connections (`--max-conns-per-ip`) and a token
//! bucket of handshakes (`--handshake-rate-per-ip`). A striped table of mutex-guarded maps;
//! entries exist only while an address holds connections or has a bucket still refilling.
//! Owns counting; the shard decides what to answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Stripes of the table: enough that shards rarely meet on one lock.
const STRIPES: usize = 64;
/// A stripe sweeps out idle entries when it has grown to this many (then to twice its size).
const SWEEP_MIN: usize = 256;

/// A handshake rate: `per_sec` tokens a second, up to `burst` saved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: u32,
}

impl RateLimit {
    /// A rate with the default burst: one second's worth, at least 1.
    pub fn new(per_sec: f64, burst: Option<u32>) -> Self {
        Self {
            per_sec,
            burst: burst.unwrap_or(per_sec.ceil() as u32).max(1),
        }
    }
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It holds `--max-conns-per-ip` connections already.
    TooManyConnections,
    /// Its bucket is empty: retry in this many seconds (at least 1).
    RateLimited { retry_after_secs: u32 },
}

#[derive(Debug)]
struct Entry {
    conns: u32,
    tokens: f64,
    refilled: Instant,
}

#[derive(Default)]
struct Stripe {
    map: HashMap<IpAddr, Entry>,
    sweep_at: usize,
}

pub struct PerIpLimiter {
    stripes: Box<[Mutex<Stripe>]>,
    /// 0: no cap.
    max_conns: u32,
    rate: Option<RateLimit>,
}

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64,
/// the block one host or one customer usually gets.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl PerIpLimiter {
    /// None when both limits are off (the shard then does no per-IP work at all).
    pub fn new(max_conns: u32, rate: Option<RateLimit>) -> Option<Self> {
        if max_conns == 0 && rate.is_none() {
            return None;
        }
        Some(Self {
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            max_conns,
            rate,
        })
    }

    /// Whether admitted connections are counted (and must be released).
    pub fn counts_connections(&self) -> bool {
        self.max_conns > 0
    }

    /// Whether upgrade requests take tokens from a bucket.
    pub fn limits_rate(&self) -> bool {
        self.rate.is_some()
    }

    fn stripe(&self, key: &IpAddr) -> &Mutex<Stripe> {
        let h = match key {
            IpAddr::V4(v4) => u32::from(*v4) as u64,
            IpAddr::V6(v6) => {
                let x = u128::from(*v6);
                (x >> 64) as u64 ^ x as u64
            }
        };
        // Fibonacci hashing: the top bits of the product mix every input bit.
        let i = (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize;
        &self.stripes[i % STRIPES]
    }

    /// A handshake from `ip`: takes a token from its bucket, then counts the connection
    /// against its cap. A refused handshake still used its token.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.admit_handshake(ip, now)?;
        self.admit_connection(ip, now)
    }

    /// A socket from `ip` was accepted: counts it against the address's cap (until
    /// `release`), whatever it turns out to be. Counting at accept, not once a request head
    /// is read, is what keeps one address from holding more than its share of
    /// `--max-connections` with half-sent heads.
    pub fn admit_connection(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        if self.max_conns == 0 {
            return Ok(());
        }
        self.with_entry(ip, now, |e| {
            if e.conns >= self.max_conns {
                return Err(Refusal::TooManyConnections);
            }
            e.conns += 1;
            Ok(())
        })
    }

    /// An upgrade request from `ip`: takes a token from its bucket.
    pub fn admit_handshake(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        self.with_entry(ip, now, |e| {
            refill(e, rate, now);
            if e.tokens < 1.0 {
                let wait = (1.0 - e.tokens) / rate.per_sec;
                return Err(Refusal::RateLimited {
                    retry_after_secs: (wait.ceil() as u32).max(1),
                });
            }
            e.tokens -= 1.0;
            Ok(())
        })
    }

    /// Runs `f` on the address's entry (made if needed) under its stripe's lock.
    fn with_entry<T>(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut Entry) -> T) -> T {
        let key = ip_key(ip);
        let mut stripe = self.stripe(&key).lock().unwrap_or_else(|p| p.into_inner());
        if stripe.map.len() >= stripe.sweep_at.max(SWEEP_MIN) {
            let rate = self.rate;
            stripe.map.retain(|_, e| !idle(e, rate, now));
            stripe.sweep_at = stripe.map.len() * 2;
        }
        let burst = self.rate.map_or(0.0, |r| r.burst as f64);
        let e = stripe.map.entry(key).or_insert(Entry {
            conns: 0,
            tokens: burst,
            refilled: now,
        });
        let r = f(e);
        if idle(e, self.rate, now) {
            stripe.map.remove(&key);
        }
        r
    }

    /// A connection counted by `admit` is gone.
    pub fn release(&self, ip: IpAddr, now: Instant) {
        if self.max_conns == 0 {
            return;
        }
        let key = ip_key(ip);
        let mut stripe = self.stripe(&key).lock().unwrap_or_else(|p| p.into_inner());
        let rate = self.rate;
        if let Some(e) = stripe.map.get_mut(&key) {
            e.conns = e.conns.saturating_sub(1);
            if idle(e, rate, now) {
                stripe.map.remove(&key);
            }
        }
    }

    /// Connections counted for `ip` (tests, diagnostics).
    pub fn connections(&self, ip: IpAddr) -> u32 {
        let key = ip_key(ip);
        let stripe = self.stripe(&key).lock().unwrap_or_else(|p| p.into_inner());
        stripe.map.get(&key).map_or(0, |e| e.conns)
    }

    /// Addresses in the table (tests, diagnostics).
    pub fn tracked(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }
}

fn refill(e: &mut Entry, rate: RateLimit, now: Instant) {
    let secs = now.saturating_duration_since(e.refilled).as_secs_f64();
    e.tokens = (e.tokens + secs * rate.per_sec).min(rate.burst as f64);
    e.refilled = now;
}

/// An entry that holds nothing: no connection and a full bucket (forgetting it changes nothing).
fn idle(e: &mut Entry, rate: Option<RateLimit>, now: Instant) -> bool {
    if e.conns > 0 {
        return false;
    }
    match rate {
        None => true,
        Some(r) => {
            refill(e, r, now);
            e.tokens >= r.burst as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn off_is_none() {
        assert!(PerIpLimiter::new(0, None).is_none());
    }

    #[test]
    fn caps_connections_per_address_and_frees_entries() {
        let l = PerIpLimiter::new(2, None).unwrap();
        let t = Instant::now();
        assert_eq!(l.admit(A, t), Ok(()));
        assert_eq!(l.admit(A, t), Ok(()));
        assert_eq!(l.admit(A, t), Err(Refusal::TooManyConnections));
        assert_eq!(l.admit(B, t), Ok(()));
        assert_eq!(l.connections(A), 2);
        l.release(A, t);
        assert_eq!(l.admit(A, t), Ok(()));
        l.release(A, t);
        l.release(A, t);
        l.release(B, t);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn bucket_refuses_then_refills() {
        let l = PerIpLimiter::new(0, Some(RateLimit::new(2.0, Some(3)))).unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.admit(A, t), Ok(()));
        }
        assert_eq!(
            l.admit(A, t),
            Err(Refusal::RateLimited {
                retry_after_secs: 1
            })
        );
        assert_eq!(l.admit(B, t), Ok(()));
        // Half a second brings one token back.
        assert_eq!(l.admit(A, t + Duration::from_millis(500)), Ok(()));
        assert!(l.admit(A, t + Duration::from_millis(500)).is_err());
        // A slow rate says how long to wait.
        let slow = PerIpLimiter::new(0, Some(RateLimit::new(0.1, Some(1)))).unwrap();
        assert_eq!(slow.admit(A, t), Ok(()));
        assert_eq!(
            slow.admit(A, t),
            Err(Refusal::RateLimited {
                retry_after_secs: 10
            })
        );
    }

    #[test]
    fn sweeps_idle_entries() {
        let l = PerIpLimiter::new(0, Some(RateLimit::new(1000.0, Some(1)))).unwrap();
        let t = Instant::now();
        for i in 0..20_000u32 {
            let ip = IpAddr::V4(i.into());
            assert_eq!(l.admit(ip, t), Ok(()));
        }
        // Long after, every bucket is full again: new admissions sweep the old entries.
        let later = t + Duration::from_secs(5);
        for i in 0..20_000u32 {
            let ip = IpAddr::V4((i + 1_000_000).into());
            assert_eq!(l.admit(ip, later), Ok(()));
        }
        assert!(l.tracked() < 30_000, "{}", l.tracked());
    }

    #[test]
    fn ipv6_counts_by_64() {
        let l = PerIpLimiter::new(1, None).unwrap();
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(l.admit(a, t), Ok(()));
        assert_eq!(l.admit(b, t), Err(Refusal::TooManyConnections));
        assert_eq!(l.admit(c, t), Ok(()));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(l.admit(mapped, t), Ok(()));
        assert_eq!(l.connections(A), 1);
    }
}
