//! AWS Signature Version 4, as a server checks it: the `Authorization` header parsed, the canonical request
//! rebuilt from what arrived, the signing key derived from the secret, and the signature compared in
//! constant time.
//!
//! What is required beyond a matching signature: the credential scope's service is `kms` and its date is the
//! request's; the request time (`X-Amz-Date`) is within 15 minutes of the clock; `host` and `x-amz-date` are
//! among the signed headers; the payload is hashed here from the bytes received (a body altered after
//! signing fails). Temporary credentials (`X-Amz-Security-Token`) are refused: an access key of this service
//! is a long-term key of one of its identities.

use aws_lc_rs::{digest, hmac};
use zeroize::Zeroizing;

/// How far the request time may be from the clock, either way.
pub const MAX_SKEW_SECONDS: i64 = 15 * 60;

/// Why a signed request is refused. The messages say what to fix, never what the signature should have
/// been.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigError {
    /// No `Authorization` header, or not a Signature Version 4 one.
    Missing,
    /// The header or a part of the request it relies on does not parse.
    Malformed(&'static str),
    /// The request carries a session token: temporary credentials are not issued here.
    SecurityToken,
    /// The credential scope names another service.
    WrongService,
    /// A header that must be signed is not.
    Unsigned(&'static str),
    /// The request time is more than [`MAX_SKEW_SECONDS`] from the clock.
    Skewed,
    /// The signature does not match.
    Mismatch,
}

impl SigError {
    /// The message an SDK shows its user.
    pub fn message(&self) -> String {
        match self {
            SigError::Missing => {
                "the request is not signed: sign it with AWS Signature Version 4 and an access key of this service".into()
            }
            SigError::Malformed(what) => format!("the request signature does not parse: {what}"),
            SigError::SecurityToken => "temporary credentials (X-Amz-Security-Token) are not accepted: sign with an access key created with `keyward access-key create`".into(),
            SigError::WrongService => "the credential scope must name the service kms".into(),
            SigError::Unsigned(h) => format!("the header {h} must be signed"),
            SigError::Skewed => "the request time (X-Amz-Date) is more than 15 minutes from the server's clock; check the client's clock".into(),
            SigError::Mismatch => "the request signature does not match: check the secret access key, and that nothing changed the request after it was signed".into(),
        }
    }
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key_id: String,
    /// The scope's date, `YYYYMMDD`.
    pub date: String,
    /// The scope's region (the ARNs of the answer use it).
    pub region: String,
    /// The scope's service.
    pub service: String,
    /// Signed header names, lower case, in the order given (which must be sorted).
    pub signed_headers: Vec<String>,
    /// The signature, 32 bytes.
    pub signature: [u8; 32],
}

/// Parses the header's value.
pub fn parse_authorization(value: &str) -> Result<Authorization, SigError> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or(SigError::Missing)?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        } else {
            return Err(SigError::Malformed("unknown Authorization component"));
        }
    }
    let credential = credential.ok_or(SigError::Malformed("no Credential"))?;
    let mut scope = credential.split('/');
    let (Some(id), Some(date), Some(region), Some(service), Some("aws4_request"), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(SigError::Malformed(
            "Credential is ACCESS_KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    if id.is_empty() || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SigError::Malformed("Credential's access key or date"));
    }
    let signed_headers: Vec<String> = signed
        .ok_or(SigError::Malformed("no SignedHeaders"))?
        .split(';')
        .map(str::to_string)
        .collect();
    let sorted = signed_headers.windows(2).all(|w| w[0] < w[1]);
    if !sorted
        || signed_headers
            .iter()
            .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(SigError::Malformed(
            "SignedHeaders are lower-case names, sorted",
        ));
    }
    let hex_signature = signature.ok_or(SigError::Malformed("no Signature"))?;
    let bytes = keyward_core::audit::unhex(hex_signature)
        .filter(|b| b.len() == 32)
        .ok_or(SigError::Malformed("Signature is 64 hex digits"))?;
    let mut sig = [0u8; 32];
    sig.copy_from_slice(&bytes);
    Ok(Authorization {
        access_key_id: id.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: sig,
    })
}

/// What of a request the signature covers.
pub struct Request<'a> {
    /// `POST`, `GET`, ...
    pub method: &'a str,
    /// The path as received (percent-encoded).
    pub path: &'a str,
    /// The query string as received, without `?`.
    pub query: &'a str,
    /// Every header as received, in order (names in any case).
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The body.
    pub body: &'a [u8],
}

fn sha256_hex(data: &[u8]) -> String {
    keyward_core::audit::hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// RFC 3986 encoding as Signature Version 4 spells it: unreserved characters as they are, everything else
/// `%XY` in upper case.
fn uri_encode(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        uri_encode(&percent_decode(segment), &mut out);
    }
    out
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let (mut ek, mut ev) = (String::new(), String::new());
            uri_encode(&percent_decode(k), &mut ek);
            uri_encode(&percent_decode(v), &mut ev);
            (ek, ev)
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Appends a header value as signed: trimmed, runs of spaces made one. Most values have neither, and are
/// copied as they are.
fn push_trimmed(value: &[u8], out: &mut String) {
    let text = String::from_utf8_lossy(value);
    let plain = !text.starts_with(' ')
        && !text.ends_with(' ')
        && !text.contains("  ")
        && !text.contains(['\t', '\n', '\r']);
    if plain {
        out.push_str(&text);
        return;
    }
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
}

fn push_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
}

/// The canonical request of Signature Version 4, built in one buffer: it is made for every request.
pub fn canonical_request(req: &Request<'_>, signed_headers: &[String]) -> String {
    canonical_request_with(req, signed_headers, |out| {
        push_hex(digest::digest(&digest::SHA256, req.body).as_ref(), out)
    })
}

/// The hex SHA-256 of a payload, as the canonical request ends with it.
pub fn payload_hash(body: &[u8]) -> String {
    sha256_hex(body)
}

fn canonical_request_with(
    req: &Request<'_>,
    signed_headers: &[String],
    payload: impl FnOnce(&mut String),
) -> String {
    let mut out = String::with_capacity(512 + req.path.len() + req.query.len());
    out.push_str(req.method);
    out.push('\n');
    if req.path == "/" {
        out.push('/');
    } else {
        out.push_str(&canonical_path(req.path));
    }
    out.push('\n');
    if !req.query.is_empty() {
        out.push_str(&canonical_query(req.query));
    }
    out.push('\n');
    for name in signed_headers {
        out.push_str(name);
        out.push(':');
        let mut first = true;
        for (_, v) in req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            if !first {
                out.push(',');
            }
            first = false;
            push_trimmed(v, &mut out);
        }
        out.push('\n');
    }
    out.push('\n');
    for (i, name) in signed_headers.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(name);
    }
    out.push('\n');
    payload(&mut out);
    out
}

/// The string to sign: algorithm, request time, scope, and the canonical request's hash.
pub fn string_to_sign(amz_date: &str, auth: &Authorization, canonical: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}/{}/{}/aws4_request\n{}",
        auth.date,
        auth.region,
        auth.service,
        sha256_hex(canonical.as_bytes())
    )
}

/// The signing key for a secret, date, region and service: the same for every request of that day, so a
/// server may keep it.
pub fn signing_key(secret: &[u8], date: &str, region: &str, service: &str) -> Zeroizing<[u8; 32]> {
    let step = |key: &[u8], data: &str| {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(tag.as_ref());
        out
    };
    let mut first = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    first.extend_from_slice(b"AWS4");
    first.extend_from_slice(secret);
    let k_date = step(&first, date);
    let k_region = step(&*k_date, region);
    let k_service = step(&*k_region, service);
    step(&*k_service, "aws4_request")
}

/// Unix seconds of an `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`).
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Checks a request's signature with the signing key of its scope. `now` is unix seconds.
pub fn verify(
    req: &Request<'_>,
    auth: &Authorization,
    key: &[u8; 32],
    now: i64,
) -> Result<(), SigError> {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    if header("x-amz-security-token").is_some() {
        return Err(SigError::SecurityToken);
    }
    if auth.service != "kms" {
        return Err(SigError::WrongService);
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(SigError::Unsigned(required));
        }
    }
    let amz_date = header("x-amz-date")
        .and_then(|v| std::str::from_utf8(v).ok())
        .ok_or(SigError::Malformed("no X-Amz-Date"))?;
    let at = parse_amz_date(amz_date).ok_or(SigError::Malformed("X-Amz-Date"))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(SigError::Malformed(
            "the credential's date is not the request's",
        ));
    }
    if (now - at).abs() > MAX_SKEW_SECONDS {
        return Err(SigError::Skewed);
    }
    let canonical = canonical_request(req, &auth.signed_headers);
    let sts = string_to_sign(amz_date, auth, &canonical);
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    // hmac::verify compares in constant time.
    hmac::verify(&key, sts.as_bytes(), &auth.signature).map_err(|_| SigError::Mismatch)
}

/// The `Authorization` header a client sends for `req` (which must carry `host` and `x-amz-date`), signing
/// every header it has: what an SDK does, for the load generator and tests that play a client.
pub fn sign(
    req: &Request<'_>,
    access_key_id: &str,
    secret: &[u8],
    region: &str,
    amz_date: &str,
) -> String {
    let key = signing_key(secret, amz_date.get(..8).unwrap_or_default(), region, "kms");
    sign_with_key(
        req,
        access_key_id,
        &key,
        region,
        amz_date,
        &payload_hash(req.body),
    )
}

/// [`sign`] with the day's signing key already derived (a client may keep it for the day, as a server
/// does) and the body's hash ([`payload_hash`]) already computed (a client sending the same body again).
pub fn sign_with_key(
    req: &Request<'_>,
    access_key_id: &str,
    key: &[u8; 32],
    region: &str,
    amz_date: &str,
    payload_hash: &str,
) -> String {
    let mut signed: Vec<String> = req
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    signed.sort();
    signed.dedup();
    let date = amz_date.get(..8).unwrap_or_default();
    let auth = Authorization {
        access_key_id: access_key_id.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: "kms".to_string(),
        signed_headers: signed,
        signature: [0; 32],
    };
    let canonical =
        canonical_request_with(req, &auth.signed_headers, |out| out.push_str(payload_hash));
    let sts = string_to_sign(amz_date, &auth, &canonical);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), sts.as_bytes());
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{date}/{region}/kms/aws4_request, SignedHeaders={}, Signature={}",
        auth.signed_headers.join(";"),
        keyward_core::audit::hex(tag.as_ref())
    )
}

/// The headers an AWS SDK sends with one KMS operation to `host` (`TrentService.<operation>`, JSON 1.1),
/// signed at `now` with the day's signing key ([`signing_key`]) over every one of them and the body whose
/// hash is `payload_hash` ([`payload_hash`]): for the load generator and the tests that play a client.
#[allow(clippy::too_many_arguments)]
pub fn kms_request_headers(
    host: &str,
    operation: &str,
    body: &[u8],
    payload_hash: &str,
    access_key_id: &str,
    key: &[u8; 32],
    region: &str,
    now: i64,
) -> Vec<(&'static str, String)> {
    let date = amz_date(now);
    let mut headers = vec![
        ("content-type", crate::CONTENT_TYPE.to_string()),
        ("host", host.to_string()),
        ("x-amz-date", date.clone()),
        ("x-amz-target", format!("TrentService.{operation}")),
    ];
    let listed: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let req = Request {
        method: "POST",
        path: "/",
        query: "",
        headers: &listed,
        body,
    };
    let auth = sign_with_key(&req, access_key_id, key, region, &date, payload_hash);
    headers.push(("authorization", auth));
    headers
}

/// `X-Amz-Date` for unix seconds.
pub fn amz_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    //! Cases from AWS's published Signature Version 4 test suite (access key `AKIDEXAMPLE`, region
    //! `us-east-1`, service `service`, 2015-08-30T12:36:00Z), then a request signed for `kms` checked end to
    //! end, and the ways a request must fail.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const SECRET: &[u8] = b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    struct Case {
        name: &'static str,
        method: &'static str,
        path: &'static str,
        query: &'static str,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
        signed: &'static str,
        creq: &'static str,
        signature: &'static str,
    }

    const HOST_DATE: &[(&str, &str)] = &[("Host", "example.amazonaws.com"), ("X-Amz-Date", DATE)];

    const CASES: &[Case] = &[
        Case {
            name: "get-vanilla",
            method: "GET",
            path: "/",
            query: "",
            headers: HOST_DATE,
            body: "",
            signed: "host;x-amz-date",
            creq: "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        },
        Case {
            name: "get-vanilla-query-order-key-case",
            method: "GET",
            path: "/",
            query: "Param2=value2&Param1=value1",
            headers: HOST_DATE,
            body: "",
            signed: "host;x-amz-date",
            creq: "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            signature: "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        },
        Case {
            name: "get-vanilla-query-order-key",
            method: "GET",
            path: "/",
            query: "Param1=value2&Param1=Value1",
            headers: HOST_DATE,
            body: "",
            signed: "host;x-amz-date",
            creq: "GET\n/\nParam1=Value1&Param1=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            signature: "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1",
        },
        Case {
            name: "get-unreserved",
            method: "GET",
            path: "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            query: "",
            headers: HOST_DATE,
            body: "",
            signed: "host;x-amz-date",
            creq: "GET\n/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            signature: "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
        },
        Case {
            name: "get-header-value-trim",
            method: "GET",
            path: "/",
            query: "",
            headers: &[
                ("Host", "example.amazonaws.com"),
                ("My-Header1", " value1"),
                ("My-Header2", " \"a   b   c\""),
                ("X-Amz-Date", DATE),
            ],
            body: "",
            signed: "host;my-header1;my-header2;x-amz-date",
            creq: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\nx-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            signature: "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        },
        Case {
            name: "get-header-key-duplicate",
            method: "GET",
            path: "/",
            query: "",
            headers: &[
                ("Host", "example.amazonaws.com"),
                ("My-Header1", "value2"),
                ("My-Header1", "value2"),
                ("My-Header1", "value1"),
                ("X-Amz-Date", DATE),
            ],
            body: "",
            signed: "host;my-header1;x-amz-date",
            creq: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            signature: "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
        },
        Case {
            name: "get-header-value-order",
            method: "GET",
            path: "/",
            query: "",
            headers: &[
                ("Host", "example.amazonaws.com"),
                ("My-Header1", "value4"),
                ("My-Header1", "value1"),
                ("My-Header1", "value3"),
                ("My-Header1", "value2"),
                ("X-Amz-Date", DATE),
            ],
            body: "",
            signed: "host;my-header1;x-amz-date",
            creq: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value4,value1,value3,value2\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            signature: "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01",
        },
        Case {
            name: "post-vanilla-query",
            method: "POST",
            path: "/",
            query: "Param1=value1",
            headers: HOST_DATE,
            body: "",
            signed: "host;x-amz-date",
            creq: "POST\n/\nParam1=value1\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            signature: "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
        },
    ];

    fn headers_of<'a>(c: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
        c.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    fn authorization(id: &str, service: &str, signed: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={id}/20150830/us-east-1/{service}/aws4_request, SignedHeaders={signed}, Signature={signature}"
        )
    }

    #[test]
    fn the_published_cases_canonicalise_and_sign_as_aws_does() {
        for c in CASES {
            let headers = headers_of(c.headers);
            let req = Request {
                method: c.method,
                path: c.path,
                query: c.query,
                headers: &headers,
                body: c.body.as_bytes(),
            };
            let auth = parse_authorization(&authorization(
                "AKIDEXAMPLE",
                "service",
                c.signed,
                c.signature,
            ))
            .unwrap();
            let creq = canonical_request(&req, &auth.signed_headers);
            assert_eq!(creq, c.creq, "{}", c.name);
            let sts = string_to_sign(DATE, &auth, &creq);
            let key = signing_key(SECRET, "20150830", "us-east-1", "service");
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &*key), sts.as_bytes());
            assert_eq!(
                keyward_core::audit::hex(tag.as_ref()),
                c.signature,
                "{}",
                c.name
            );
        }
    }

    /// A KMS request as an SDK signs it, and the signature it carries.
    fn signed_kms(body: &str) -> (Vec<(&'static str, String)>, String) {
        let headers = vec![
            ("host", "kms.example:9700".to_string()),
            ("x-amz-date", DATE.to_string()),
            ("x-amz-target", "TrentService.Encrypt".to_string()),
        ];
        let listed: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &listed,
            body: body.as_bytes(),
        };
        let signed = "host;x-amz-date;x-amz-target";
        let placeholder = authorization("AKKWTEST", "kms", signed, &"0".repeat(64));
        let auth = parse_authorization(&placeholder).unwrap();
        let sts = string_to_sign(DATE, &auth, &canonical_request(&req, &auth.signed_headers));
        let key = signing_key(SECRET, "20150830", "us-east-1", "kms");
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &*key), sts.as_bytes());
        let header = authorization(
            "AKKWTEST",
            "kms",
            signed,
            &keyward_core::audit::hex(tag.as_ref()),
        );
        (headers, header)
    }

    fn check(
        headers: &[(&str, String)],
        header: &str,
        body: &str,
        secret: &[u8],
        now: i64,
    ) -> Result<(), SigError> {
        let listed: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &listed,
            body: body.as_bytes(),
        };
        let auth = parse_authorization(header)?;
        let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
        verify(&req, &auth, &key, now)
    }

    #[test]
    fn a_kms_request_verifies_and_every_alteration_fails() {
        let body = r#"{"KeyId":"alias/app","Plaintext":"aGk="}"#;
        let now = parse_amz_date(DATE).unwrap();
        let (headers, header) = signed_kms(body);
        assert_eq!(check(&headers, &header, body, SECRET, now), Ok(()));
        assert_eq!(
            check(&headers, &header, body, SECRET, now + 14 * 60),
            Ok(())
        );
        // The body altered after signing.
        let altered = r#"{"KeyId":"alias/app","Plaintext":"aGl="}"#;
        assert_eq!(
            check(&headers, &header, altered, SECRET, now),
            Err(SigError::Mismatch)
        );
        // The wrong secret.
        assert_eq!(
            check(&headers, &header, body, b"another secret", now),
            Err(SigError::Mismatch)
        );
        // A date too far from the clock, either way.
        assert_eq!(
            check(&headers, &header, body, SECRET, now + 16 * 60),
            Err(SigError::Skewed)
        );
        assert_eq!(
            check(&headers, &header, body, SECRET, now - 16 * 60),
            Err(SigError::Skewed)
        );
        // A header changed after signing.
        let mut moved = headers.clone();
        moved[2].1 = "TrentService.Decrypt".into();
        assert_eq!(
            check(&moved, &header, body, SECRET, now),
            Err(SigError::Mismatch)
        );
        // A session token.
        let mut with_token = headers.clone();
        with_token.push(("x-amz-security-token", "FQoGZXIvYXdz".into()));
        assert_eq!(
            check(&with_token, &header, body, SECRET, now),
            Err(SigError::SecurityToken)
        );
        // Host not signed.
        let unsigned = header.replace(
            "SignedHeaders=host;x-amz-date;x-amz-target",
            "SignedHeaders=x-amz-date;x-amz-target",
        );
        assert_eq!(
            check(&headers, &unsigned, body, SECRET, now),
            Err(SigError::Unsigned("host"))
        );
        // Another service's scope.
        let other = header.replace("/kms/", "/s3/");
        assert_eq!(
            check(&headers, &other, body, SECRET, now),
            Err(SigError::WrongService)
        );
    }

    #[test]
    fn what_sign_makes_verifies() {
        let headers = [
            ("host", "kms.example".as_bytes()),
            ("x-amz-date", DATE.as_bytes()),
        ];
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: b"{}",
        };
        let header = sign(&req, "AKKWTEST", SECRET, "us-east-1", DATE);
        let auth = parse_authorization(&header).unwrap();
        let key = signing_key(SECRET, "20150830", "us-east-1", "kms");
        let now = parse_amz_date(DATE).unwrap();
        assert_eq!(verify(&req, &auth, &key, now), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused_with_what_is_wrong() {
        assert_eq!(parse_authorization("Bearer x"), Err(SigError::Missing));
        for bad in [
            "AWS4-HMAC-SHA256 Credential=A/2015/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/kms, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/kms/aws4_request, SignedHeaders=x-amz-date;host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=zz",
            "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/kms/aws4_request, SignedHeaders=host",
        ] {
            assert!(
                matches!(parse_authorization(bad), Err(SigError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(
            parse_amz_date(&amz_date(4_102_444_799)),
            Some(4_102_444_799)
        );
        assert_eq!(parse_amz_date("20150830T123600"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }
}
