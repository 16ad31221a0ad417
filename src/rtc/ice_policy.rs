//! Which remote addresses ICE may send connectivity checks to (`rtc.ice_allow`,
//! `rtc.ice_deny`). Without a policy anyone who can place a call can make the daemon send STUN
//! to any host and port named in an offer; the policy removes the offer's candidates outside
//! the allowed networks before webrtc-rs sees them, so no check is ever sent there.
//!
//! A candidate is kept when its address is in `ice_allow` (empty: every address) and in no
//! network of `ice_deny` (deny wins). A candidate whose address is a hostname (an mDNS
//! `.local` name) is kept only when both lists are empty: mDNS is off, and a name cannot be
//! checked against a network. Pure functions over the SDP text; no I/O.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IP network in CIDR notation (`10.0.0.0/8`, `fc00::/7`), or one address (`127.0.0.2`,
/// the same as `/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a network does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    #[error("`{0}` is not an IP address or network (e.g. 10.0.0.0/8)")]
    Address(String),
    /// The prefix length is not a number up to 32 (IPv4) or 128 (IPv6).
    #[error("`{0}`: the prefix length must be 0..=32 for IPv4, 0..=128 for IPv6")]
    Prefix(String),
    /// Bits are set after the prefix (`10.1.0.0/8`): probably a typo for another network.
    #[error("`{0}` has bits set after the prefix; write the network address")]
    HostBits(String),
}

impl IpNet {
    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is
    /// matched as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| IpNetError::Address(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| IpNetError::Prefix(s.to_owned()))?,
        };
        let net = IpNet { addr, prefix };
        let masked = match addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                bits & !mask != 0
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                bits & !mask != 0
            }
        };
        if masked {
            return Err(IpNetError::HostBits(s.to_owned()));
        }
        Ok(net)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The networks ICE may check. The default (both lists empty) allows every address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IcePolicy {
    /// Networks candidates must be in; empty for any.
    pub allow: Vec<IpNet>,
    /// Networks candidates must not be in; wins over `allow`.
    pub deny: Vec<IpNet>,
}

/// An offer with its refused candidates removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilteredOffer {
    /// The SDP, byte for byte the offer's apart from the removed `a=candidate` lines.
    pub sdp: String,
    /// Candidates kept.
    pub kept: usize,
    /// Candidates removed.
    pub refused: usize,
}

impl IcePolicy {
    /// Whether both lists are empty: every candidate is kept.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether ICE may send checks to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip)))
            && !self.deny.iter().any(|n| n.contains(ip))
    }

    /// Removes every `a=candidate` line the policy refuses (see the module docs), including
    /// lines too short to name an address. Other lines, and their line endings, are kept.
    pub fn filter_offer(&self, sdp: &str) -> FilteredOffer {
        let mut out = String::with_capacity(sdp.len());
        let (mut kept, mut refused) = (0, 0);
        for line in sdp.split_inclusive('\n') {
            let content = line.trim_end_matches(['\r', '\n']);
            if let Some(candidate) = content.strip_prefix("a=candidate:") {
                if self.keeps(candidate) {
                    kept += 1;
                } else {
                    refused += 1;
                    continue;
                }
            }
            out.push_str(line);
        }
        FilteredOffer {
            sdp: out,
            kept,
            refused,
        }
    }

    /// Whether the candidate attribute's value (`foundation component transport priority
    /// address port typ ...`, RFC 8839) is kept.
    fn keeps(&self, candidate: &str) -> bool {
        if self.is_open() {
            return true;
        }
        candidate
            .split_whitespace()
            .nth(4)
            .and_then(|address| address.parse::<IpAddr>().ok())
            .is_some_and(|ip| self.permits(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("172.16.0.0/12").contains(ip("172.31.255.255")));
        assert!(!net("172.16.0.0/12").contains(ip("172.32.0.0")));
        assert!(net("127.0.0.2").contains(ip("127.0.0.2")));
        assert!(!net("127.0.0.2").contains(ip("127.0.0.1")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("fc00::/7").contains(ip("fd12::1")));
        assert!(net("::1/128").contains(ip("::1")));
        // IPv4-mapped IPv6 is matched as IPv4.
        assert!(net("192.168.0.0/16").contains(ip("::ffff:192.168.1.1")));
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("127.0.0.2").to_string(), "127.0.0.2/32");
    }

    #[test]
    fn bad_networks_are_named_errors() {
        assert!(matches!(
            "10.0.0/8".parse::<IpNet>(),
            Err(IpNetError::Address(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<IpNet>(),
            Err(IpNetError::Prefix(_))
        ));
        assert!(matches!(
            "10.1.0.0/8".parse::<IpNet>(),
            Err(IpNetError::HostBits(_))
        ));
        assert!(matches!("".parse::<IpNet>(), Err(IpNetError::Address(_))));
    }

    const OFFER: &str = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n\
        a=candidate:2 1 udp 2130706431 127.0.0.2 5001 typ host\r\n\
        a=candidate:3 1 udp 1694498815 203.0.113.9 5002 typ srflx raddr 10.0.0.1 rport 5000\r\n\
        a=candidate:4 1 udp 2130706431 abcd.local 5003 typ host\r\n\
        a=candidate:5 1 udp\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn the_default_keeps_every_candidate() {
        let filtered = IcePolicy::default().filter_offer(OFFER);
        assert_eq!(filtered.sdp, OFFER);
        assert_eq!((filtered.kept, filtered.refused), (5, 0));
    }

    #[test]
    fn denied_networks_are_removed_and_nothing_else_changes() {
        let policy = IcePolicy {
            allow: vec![],
            deny: vec![net("127.0.0.2/32"), net("10.0.0.0/8")],
        };
        let filtered = policy.filter_offer(OFFER);
        assert_eq!((filtered.kept, filtered.refused), (2, 3));
        assert!(filtered.sdp.contains(" 127.0.0.1 5000 "));
        assert!(!filtered.sdp.contains("127.0.0.2"));
        // The srflx candidate's related address is not what ICE checks: it stays.
        assert!(filtered.sdp.contains(" 203.0.113.9 5002 "));
        assert!(!filtered.sdp.contains(".local"));
        assert!(filtered.sdp.ends_with("a=end-of-candidates\r\n"));
        assert!(filtered.sdp.starts_with("v=0\r\nm=audio"));
    }

    #[test]
    fn an_allow_list_keeps_only_its_networks_and_deny_wins() {
        let policy = IcePolicy {
            allow: vec![net("127.0.0.0/8")],
            deny: vec![net("127.0.0.2")],
        };
        let filtered = policy.filter_offer(OFFER);
        assert_eq!((filtered.kept, filtered.refused), (1, 4));
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(!policy.permits(ip("127.0.0.2")));
        assert!(!policy.permits(ip("203.0.113.9")));
    }
}
