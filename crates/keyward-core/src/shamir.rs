//! Shamir secret sharing of the unseal key, over GF(2^8) with the `sharks` crate.
//!
//! A share is encoded as `0x01 || x || y[32]` and handed out in base64. Shares carry no threshold and no key
//! check value: a wrong or foreign share is detected when the combined key fails to open the stored root key.

use base64::Engine as _;
use keyward_hsm::SecretBytes;
use sharks::{Share, Sharks};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{KmsError, KmsResult};

const SHARE_FORMAT: u8 = 1;

/// Splits `secret` into `shares` shares, any `threshold` of which recover it.
pub fn split(secret: &SecretBytes, shares: u8, threshold: u8) -> KmsResult<Vec<SecretBytes>> {
    if threshold == 0 || shares < threshold {
        return Err(KmsError::validation(
            "threshold must be between 1 and the number of shares",
        ));
    }
    let dealer = Sharks(threshold).dealer(secret.expose());
    Ok(dealer
        .take(shares as usize)
        .map(|s| {
            let mut raw = Vec::from(&s);
            let mut out = Vec::with_capacity(raw.len() + 1);
            out.push(SHARE_FORMAT);
            out.extend_from_slice(&raw);
            raw.zeroize();
            SecretBytes::new(out)
        })
        .collect())
}

/// Decodes a base64 share; returns its x coordinate (for de-duplication) and the raw share.
pub fn decode(b64: &str) -> KmsResult<(u8, SecretBytes)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| KmsError::validation("share is not valid base64"))?;
    let bytes = SecretBytes::new(bytes);
    match bytes.expose() {
        [SHARE_FORMAT, x, y @ ..] if *x != 0 && y.len() == 32 => Ok((*x, bytes)),
        _ => Err(KmsError::validation("share is not a Keyward unseal share")),
    }
}

/// Encodes a share for display.
pub fn encode(share: &SecretBytes) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(share.expose().len() * 4 / 3 + 4));
    base64::engine::general_purpose::STANDARD.encode_string(share.expose(), &mut out);
    out
}

/// Decodes base64 shares as operators hand them in, ignores repeats of one share, and combines them once
/// at least `threshold` distinct ones are there.
pub fn combine_encoded(shares_b64: &[Zeroizing<String>], threshold: u8) -> KmsResult<SecretBytes> {
    let mut seen = std::collections::BTreeSet::new();
    let mut shares = Vec::new();
    for s in shares_b64 {
        let (x, share) = decode(s)?;
        if seen.insert(x) {
            shares.push(share);
        }
    }
    if shares.len() < threshold as usize {
        return Err(KmsError::validation(format!(
            "{threshold} distinct shares are needed"
        )));
    }
    combine(&shares, threshold)
}

/// Combines at least `threshold` distinct shares.
pub fn combine(shares: &[SecretBytes], threshold: u8) -> KmsResult<SecretBytes> {
    let parsed: Vec<Share> = shares
        .iter()
        .filter_map(|s| {
            s.expose()
                .get(1..)
                .and_then(|raw| Share::try_from(raw).ok())
        })
        .collect();
    let mut secret = Sharks(threshold)
        .recover(parsed.as_slice())
        .map_err(|_| KmsError::validation("not enough valid shares"))?;
    let out = SecretBytes::from_slice(&secret);
    secret.zeroize();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_subset_recovers() {
        let secret = SecretBytes::from_slice(&[9u8; 32]);
        let shares = split(&secret, 5, 3).unwrap();
        let encoded: Vec<Zeroizing<String>> = shares.iter().map(encode).collect();
        let decoded: Vec<SecretBytes> = encoded.iter().map(|s| decode(s).unwrap().1).collect();
        for combo in [[0, 1, 2], [0, 3, 4], [4, 2, 1]] {
            let pick: Vec<SecretBytes> = combo.iter().map(|&i| decoded[i].clone()).collect();
            assert_eq!(combine(&pick, 3).unwrap(), secret);
        }
        let two: Vec<SecretBytes> = decoded[..2].to_vec();
        assert!(combine(&two, 3).map(|s| s != secret).unwrap_or(true));
        assert!(split(&secret, 2, 3).is_err());
        assert!(decode("!!").is_err());
        assert!(decode(&base64::engine::general_purpose::STANDARD.encode([1u8, 0, 1])).is_err());
    }
}
