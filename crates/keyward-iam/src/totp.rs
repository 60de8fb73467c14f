//! TOTP (RFC 6238) over HMAC-SHA-1 (RFC 4226), the variant every authenticator app implements.

/// Seconds per step.
pub const STEP: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;

/// The HOTP value for a counter.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = aws_lc_rs::hmac::sign(&key, &counter.to_be_bytes());
    let m = mac.as_ref();
    let offset = (m.get(19).copied().unwrap_or(0) & 0x0f) as usize;
    let word = m
        .get(offset..offset + 4)
        .map(|b| u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]))
        .unwrap_or(0);
    word % 10u32.pow(digits)
}

/// Checks a code against the steps around `now`; returns the matching counter if it is newer than
/// `last_used` (codes are single-use). The comparison runs over every candidate step regardless of matches.
pub fn verify(secret: &[u8], code: &str, now: i64, last_used: Option<u64>) -> Option<u64> {
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let given: u32 = code.parse().ok()?;
    let now_step = (now / STEP) as u64;
    let mut found = None;
    for counter in [now_step.saturating_sub(1), now_step, now_step + 1] {
        let expected = hotp(secret, counter, DIGITS);
        let equal = aws_lc_rs::constant_time::verify_slices_are_equal(
            &expected.to_be_bytes(),
            &given.to_be_bytes(),
        )
        .is_ok();
        if equal && last_used.is_none_or(|l| counter > l) && found.is_none() {
            found = Some(counter);
        }
    }
    found
}

/// RFC 4648 base32 without padding, as authenticator apps expect in `otpauth://` URIs.
pub fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in data {
        buffer = (buffer << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_sha1_vectors() {
        // Appendix B of RFC 6238: the SHA-1 seed and 8-digit codes.
        let seed = b"12345678901234567890";
        for (t, code) in [
            (59i64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(hotp(seed, (t / STEP) as u64, 8), code, "T={t}");
        }
    }

    #[test]
    fn rfc_4226_hotp_vectors() {
        let seed = b"12345678901234567890";
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (i, code) in expected.iter().enumerate() {
            assert_eq!(hotp(seed, i as u64, 6), *code);
        }
    }

    #[test]
    fn codes_are_single_use_and_windowed() {
        let seed = b"12345678901234567890";
        let now = 1_111_111_111;
        let code = format!("{:06}", hotp(seed, (now / STEP) as u64, 6));
        let used = verify(seed, &code, now, None).unwrap_or(0);
        assert_eq!(
            verify(seed, &code, now, Some(used)),
            None,
            "replayed code accepted"
        );
        assert!(
            verify(seed, &code, now + STEP, None).is_some(),
            "previous step not accepted"
        );
        assert!(
            verify(seed, &code, now + 3 * STEP, None).is_none(),
            "stale code accepted"
        );
        assert!(
            verify(seed, "12345", now, None).is_none()
                && verify(seed, "abcdef", now, None).is_none()
        );
    }

    #[test]
    fn base32_matches_rfc_4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
    }
}
