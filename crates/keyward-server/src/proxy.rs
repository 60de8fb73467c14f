//! The PROXY protocol (HAProxy's, versions 1 and 2). A load balancer that passes TCP through (so that TLS,
//! and client certificates, end at Keyward) makes every connection come from its own address; the audit
//! log would then name the balancer, and a policy's `source_cidr` would judge the balancer rather than the
//! client. With the protocol, the balancer opens each connection with a header naming the client.
//!
//! Only the addresses in `proxy_protocol_from` are trusted to send one, and they must: a header from anyone
//! else would let a client claim any address, and a trusted balancer's connection without one would be
//! taken for the balancer's own. The header is read byte-exactly, so whatever follows it (the TLS
//! handshake, or the HTTP request) is left on the socket untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The version 2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The most a version 2 header may carry after its 16 fixed bytes: the addresses and the TLVs a balancer
/// adds (unique id, TLS details). Larger is refused rather than buffered.
const V2_MAX_PAYLOAD: usize = 4096;

/// What the header said.
#[derive(Debug, PartialEq, Eq)]
pub enum Proxied {
    /// The connection carries this client's traffic.
    Client(SocketAddr),
    /// The balancer's own connection (a health check), or a client of a family without an address here:
    /// the connection's own address stands.
    Local,
}

/// Reads one PROXY header, version 1 or 2, and nothing after it.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Proxied, String> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head[..12]).await.map_err(closed)?;
    if head[..12] == V2_SIGNATURE {
        r.read_exact(&mut head[12..]).await.map_err(closed)?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if len > V2_MAX_PAYLOAD {
            return Err(format!("PROXY v2 header of {len} bytes"));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await.map_err(closed)?;
        return parse_v2(head[12], head[13], &payload);
    }
    if !head.starts_with(b"PROXY ") {
        return Err("the connection does not begin with a PROXY header".into());
    }
    let mut line = head[..12].to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err("PROXY v1 header longer than 107 bytes".into());
        }
        line.push(r.read_u8().await.map_err(closed)?);
    }
    parse_v1(&line)
}

fn closed(e: std::io::Error) -> String {
    format!("connection ended inside its PROXY header: {e}")
}

fn parse_v1(line: &[u8]) -> Result<Proxied, String> {
    let text = std::str::from_utf8(line)
        .ok()
        .and_then(|t| t.strip_suffix("\r\n"))
        .ok_or("PROXY v1 header is not text")?;
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Proxied::Local),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| "PROXY v1 source address does not parse")?;
            if ip.is_ipv4() != (*family == "TCP4") {
                return Err("PROXY v1 source address is not of its family".into());
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| "PROXY v1 source port does not parse")?;
            Ok(Proxied::Client(SocketAddr::new(ip, port)))
        }
        _ => Err("PROXY v1 header is malformed".into()),
    }
}

fn parse_v2(version_command: u8, family: u8, payload: &[u8]) -> Result<Proxied, String> {
    if version_command >> 4 != 2 {
        return Err("PROXY header of an unknown version".into());
    }
    match version_command & 0x0f {
        0 => return Ok(Proxied::Local),
        1 => {}
        _ => return Err("PROXY v2 header with an unknown command".into()),
    }
    let short = || "PROXY v2 header shorter than its addresses".to_string();
    match family >> 4 {
        // IPv4: source, destination, source port, destination port.
        1 => {
            let a = payload.get(..12).ok_or_else(short)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let port = u16::from_be_bytes([a[8], a[9]]);
            Ok(Proxied::Client(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        2 => {
            let a = payload.get(..36).ok_or_else(short)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Ok(Proxied::Client(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        // Unspecified or a Unix socket: no client address to take.
        0 | 3 => Ok(Proxied::Local),
        _ => Err("PROXY v2 header of an unknown address family".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Proxied, String>, Vec<u8>) {
        let mut r = bytes;
        let said = read_header(&mut r).await;
        (said, r.to_vec())
    }

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    #[tokio::test]
    async fn version_1_names_the_client_and_leaves_the_rest() {
        let (said, rest) =
            read(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 9700\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(
            said,
            Ok(Proxied::Client("203.0.113.7:51234".parse().unwrap()))
        );
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (said, rest) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 443 9700\r\n\x16\x03").await;
        assert_eq!(
            said,
            Ok(Proxied::Client("[2001:db8::7]:443".parse().unwrap()))
        );
        assert_eq!(rest, b"\x16\x03");
        let (said, rest) = read(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!((said, rest), (Ok(Proxied::Local), b"X".to_vec()));
    }

    #[tokio::test]
    async fn version_2_names_the_client_and_skips_its_tlvs() {
        let mut payload = vec![203, 0, 113, 7, 10, 0, 0, 1];
        payload.extend_from_slice(&51234u16.to_be_bytes());
        payload.extend_from_slice(&9700u16.to_be_bytes());
        // A TLV (PP2_TYPE_UNIQUE_ID) after the addresses.
        payload.extend_from_slice(&[0x05, 0x00, 0x03, b'a', b'b', b'c']);
        let mut bytes = v2(1, 0x11, &payload);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (said, rest) = read(&bytes).await;
        assert_eq!(
            said,
            Ok(Proxied::Client("203.0.113.7:51234".parse().unwrap()))
        );
        assert_eq!(rest, b"\x16\x03\x01");

        let mut payload = Vec::new();
        payload.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        payload.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        payload.extend_from_slice(&[0x01, 0xbb, 0x25, 0xe4]);
        let (said, _) = read(&v2(1, 0x21, &payload)).await;
        assert_eq!(
            said,
            Ok(Proxied::Client("[2001:db8::7]:443".parse().unwrap()))
        );
        // The balancer's own health check.
        let (said, rest) = read(&[v2(0, 0x00, &[]), b"GET".to_vec()].concat()).await;
        assert_eq!((said, rest), (Ok(Proxied::Local), b"GET".to_vec()));
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120], b"\r\n"].concat();
        let cases: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: k\r\n\r\n".to_vec(),
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n".to_vec(),
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n".to_vec(),
            b"PROXY TCP4 203.0.113.7 10.0.0.1 70000 9700\r\n".to_vec(),
            b"PROXY TCP4 203.0.113".to_vec(),
            long,
            v2(1, 0x11, &[1, 2, 3]),
            v2(2, 0x11, &[0; 12]),
            v2(1, 0x51, &[0; 12]),
            [V2_SIGNATURE.as_slice(), &[0x21, 0x11, 0xff, 0xff]].concat(),
            [V2_SIGNATURE.as_slice(), &[0x11, 0x11, 0, 0]].concat(),
        ];
        for bytes in cases {
            let (said, _) = read(&bytes).await;
            assert!(
                said.is_err(),
                "{:?}: {said:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}
