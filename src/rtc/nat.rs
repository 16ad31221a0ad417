//! 1:1 NAT for host candidates: webrtc-rs 0.21 accepts `SettingEngine::with_nat_1to1_ips` but
//! never applies it, so the answer's candidate addresses are rewritten here. Pure text work.

use std::net::IpAddr;

use super::RtcError;

/// Checks that `public_ips` can be mapped onto `bind_ips`: empty (no NAT), one address for all,
/// or one per bind address (paired by position).
pub fn check_mapping(bind_ips: &[IpAddr], public_ips: &[IpAddr]) -> Result<(), RtcError> {
    if public_ips.len() <= 1 || public_ips.len() == bind_ips.len() {
        Ok(())
    } else {
        Err(RtcError::Settings(
            "public_ips needs one address, or one per bind_ip",
        ))
    }
}

/// Rewrites the connection address of every `a=candidate` line of type `host` in `sdp`: with
/// one public address every candidate announces it; otherwise a candidate on `bind_ips[i]`
/// announces `public_ips[i]`. Other lines, and candidates on unmapped addresses, are kept.
/// Returns `sdp` unchanged when `public_ips` is empty.
pub fn announce_public_ips(sdp: &str, bind_ips: &[IpAddr], public_ips: &[IpAddr]) -> String {
    if public_ips.is_empty() {
        return sdp.to_owned();
    }
    let map = |addr: &str| -> Option<IpAddr> {
        if let [only] = public_ips {
            return Some(*only);
        }
        let ip: IpAddr = addr.parse().ok()?;
        let i = bind_ips.iter().position(|b| *b == ip)?;
        public_ips.get(i).copied()
    };
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        match rewrite_candidate(body, &map) {
            Some(rewritten) => {
                out.push_str(&rewritten);
                out.push_str(ending);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The candidate line with its address replaced; None when `line` is not a host candidate
/// or its address is unmapped.
fn rewrite_candidate(line: &str, map: &impl Fn(&str) -> Option<IpAddr>) -> Option<String> {
    let rest = line.strip_prefix("a=candidate:")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    // foundation component transport priority address port "typ" type ...
    if fields.get(6) != Some(&"typ") || fields.get(7) != Some(&"host") {
        return None;
    }
    let public = map(fields.get(4)?)?.to_string();
    let mut fields = fields;
    fields[4] = &public;
    Some(format!("a=candidate:{}", fields.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const SDP: &str = "v=0\r\na=candidate:1 1 udp 2130706431 10.0.0.5 4000 typ host\r\n\
        a=candidate:2 1 udp 2130706431 10.0.1.5 4001 typ host\r\n\
        a=candidate:3 1 udp 1694498815 1.2.3.4 4002 typ srflx raddr 0.0.0.0 rport 4002\r\n";

    #[test]
    fn one_public_ip_for_all_host_candidates() {
        let out = announce_public_ips(SDP, &[ip("10.0.0.5"), ip("10.0.1.5")], &[ip("203.0.113.7")]);
        assert!(out.contains("203.0.113.7 4000 typ host\r\n"));
        assert!(out.contains("203.0.113.7 4001 typ host\r\n"));
        assert!(out.contains("1.2.3.4 4002 typ srflx"), "non-host kept");
    }

    #[test]
    fn paired_by_position_and_unmapped_kept() {
        let out = announce_public_ips(
            SDP,
            &[ip("10.0.1.5"), ip("10.9.9.9")],
            &[ip("198.51.100.1"), ip("198.51.100.2")],
        );
        assert!(out.contains("10.0.0.5 4000"), "unmapped kept");
        assert!(out.contains("198.51.100.1 4001"));
        assert_eq!(announce_public_ips(SDP, &[], &[]), SDP);
    }

    #[test]
    fn mapping_shapes() {
        let b = [ip("10.0.0.1"), ip("10.0.0.2")];
        assert!(check_mapping(&b, &[]).is_ok());
        assert!(check_mapping(&b, &[ip("1.1.1.1")]).is_ok());
        assert!(check_mapping(&b, &[ip("1.1.1.1"), ip("1.1.1.2")]).is_ok());
        assert!(check_mapping(&[ip("10.0.0.1")], &[ip("1.1.1.1"), ip("1.1.1.2")]).is_err());
    }

    #[test]
    fn odd_candidate_lines_never_panic() {
        for l in [
            "a=candidate:",
            "a=candidate:1 1 udp",
            "a=candidate:1 1 udp 1 x 1 typ host",
        ] {
            let _ = announce_public_ips(l, &[], &[ip("1.1.1.1")]);
        }
    }
}
